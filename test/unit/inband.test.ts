// The pieces of `bmsnap now --mode kexec` that read text or write bytes: the newc cpio (read back
// by the real cpio tool), mountinfo/lockdown/cmdline parsing, and the root disk of this very host
// (read from its real /proc and /sys; nothing is written).
import t from 'tap';
import { execa } from 'execa';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { newcArchive } from '../../agent/src/inband/cpio.js';
import { deviceOfMount, rootDisk } from '../../agent/src/inband/root-disk.js';
import { lockdownMode } from '../../agent/src/inband/preflight.js';
import { returnCmdline } from '../../agent/src/inband/return-kernel.js';
import { diskMounts } from '../../agent/src/inband/kexec.js';
import { resultWord } from '../../agent/src/cli/oneshot-command.js';

t.test('newc cpio: the cpio tool extracts names, modes and contents', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bmsnap-cpio-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const big = Buffer.alloc(70001, 7);
  const archive = Buffer.concat(newcArchive([
    { name: 'etc/bmsnap', type: 'dir', mode: 0o700 },
    { name: 'etc/bmsnap/oneshot.json', type: 'file', mode: 0o600, data: Buffer.from('{"x":1}') },
    { name: 'etc/bmsnap/odd', type: 'file', mode: 0o644, data: big },
  ]));
  t.equal(archive.length % 4, 0, 'length a multiple of 4');
  await writeFile(join(dir, 'a.cpio'), archive);
  await execa('sh', ['-c', 'mkdir x && cd x && cpio -id --quiet < ../a.cpio'], { cwd: dir });
  t.equal(await readFile(join(dir, 'x/etc/bmsnap/oneshot.json'), 'utf8'), '{"x":1}');
  t.same(await readFile(join(dir, 'x/etc/bmsnap/odd')), big);
  t.equal((await stat(join(dir, 'x/etc/bmsnap/oneshot.json'))).mode & 0o777, 0o600, 'mode 0600 kept');
  t.equal((await stat(join(dir, 'x/etc/bmsnap'))).mode & 0o777, 0o700);
  t.throws(() => newcArchive([{ name: '/abs', type: 'dir', mode: 0o755 }]));
});

t.test('parsing', async (t) => {
  const mi = '22 1 0:21 / / rw - rootfs rootfs rw\n25 22 253:3 / / rw,relatime - ext4 /dev/vda3 rw\n26 25 0:5 / /dev rw - devtmpfs d rw\n';
  t.equal(deviceOfMount(mi), '253:3', 'the last mount on / wins');
  t.equal(deviceOfMount(mi, '/boot'), undefined);
  t.equal(lockdownMode('[none] integrity confidentiality\n'), 'none');
  t.equal(lockdownMode('none [integrity] confidentiality\n'), 'integrity');
  t.equal(returnCmdline('BOOT_IMAGE=/boot/vmlinuz root=/dev/vda3 bmsnap.result=ok:abc quiet\n'), 'BOOT_IMAGE=/boot/vmlinuz root=/dev/vda3 quiet');
  t.same(diskMounts('/dev/vda3 / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/vdb /dev/job ext4 rw 0 0\n/dev/vda2 /boot/efi vfat rw 0 0\ntmpfs /run tmpfs rw 0 0\n'),
    ['/boot/efi', '/dev/job', '/'], 'disk filesystems, deepest first');
  t.equal(resultWord('cannot reach Glance at http://10.0.2.100:1: connection refused'), 'cannot_reach_Glance_at_http://10.0.2.100:1:_connection_refused');
});

t.test('the root disk of this host, from its real /proc and /sys', async (t) => {
  const disk = await rootDisk().catch((e: Error) => e);
  if (disk instanceof Error) { t.match(disk.message, /^(cannot find the disk holding \/|\/ spans several disks)/, `refused: ${disk.message}`); return; }
  t.ok((await stat(`/sys/block/${disk}`)).isDirectory(), `/ is on ${disk}, a whole disk in /sys/block`);
});

t.test('hand-over initramfs: ramdisk bytes, padding, then a cpio the tool reads; mode 0600', async (t) => {
  const { writeHandoverInitramfs } = await import('../../agent/src/inband/handover.js');
  const dir = await mkdtemp(join(tmpdir(), 'bmsnap-handover-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ramdisk = Buffer.from('not really zstd, 27 bytes.\n');
  await writeFile(join(dir, 'rd'), ramdisk);
  const out = join(dir, 'out');
  await writeHandoverInitramfs(out, join(dir, 'rd'), [{ name: 'etc/bmsnap', type: 'dir', mode: 0o700 },
    { name: 'etc/bmsnap/oneshot.json', type: 'file', mode: 0o600, data: Buffer.from('{}') }]);
  t.equal((await stat(out)).mode & 0o777, 0o600, 'created 0600');
  const all = await readFile(out);
  t.same(all.subarray(0, ramdisk.length), ramdisk, 'starts with the ramdisk');
  t.equal(all.subarray(ramdisk.length, 28).toString('hex'), '00', 'zero padding to a 4-byte boundary');
  await writeFile(join(dir, 'tail.cpio'), all.subarray(28));
  await execa('sh', ['-c', 'mkdir x && cd x && cpio -id --quiet < ../tail.cpio'], { cwd: dir });
  t.equal(await readFile(join(dir, 'x/etc/bmsnap/oneshot.json'), 'utf8'), '{}');
  await t.rejects(writeHandoverInitramfs(out, join(dir, 'rd'), []), 'never overwrites an existing file');
});
