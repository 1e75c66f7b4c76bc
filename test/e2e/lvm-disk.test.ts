// The LVM-root layout of test/lib/bootable-disk.sh (--lvm), for the live-snapshot test: built on a
// host without device-mapper, its LV found again by test/lib/lvm-image.sh and fsck'ed through a
// read-only loop device, then booted in qemu (TCG, no network). A job disk checks what the live
// snapshot will rely on in the guest: root on /dev/mapper/bmsnapvg-root, device-mapper,
// dm_snapshot and loop loaded, the ESP (vfat) and /boot (ext4) mountable on the empty mount points.
// The plain layout is built too: still two lines on stdout, and no LV in it.
import t from 'tap';
import { execa } from 'execa';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../lib/disks.js';
import { Vm } from '../lib/vm.js';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root (loop devices for the test disk)');
  process.exit(0);
}

const BOOTABLE_DISK = join(REPO_ROOT, 'test/lib/bootable-disk.sh');
const LVM_IMAGE = join(REPO_ROOT, 'test/lib/lvm-image.sh');
const started = Date.now();
const secs = (from: number) => Math.round((Date.now() - from) / 100) / 10;
const work = await mkdtemp(join(tmpdir(), 'bmsnap-lvm-disk-'));
t.comment(`work dir ${work}`);
let vm: Vm | undefined;
t.teardown(async () => {
  await vm?.stop();
  if (t.passing()) await rm(work, { recursive: true, force: true });
  else console.error(`# kept ${work}`);
  console.error(`# total ${secs(started)} s`);
});

/** e2fsck -fn of the LV, reached through a read-only loop device at its byte range. */
async function fsckLv(raw: string, offset: number, size: number) {
  const loop = (await execa('losetup', ['-r', '-f', '--show', '-o', String(offset), '--sizelimit', String(size), raw])).stdout.trim();
  try {
    return await execa('e2fsck', ['-fn', loop], { reject: false, stdin: 'ignore', all: true });
  } finally {
    await execa('losetup', ['-d', loop]);
  }
}

const disk = join(work, 'lvm.raw');
const marker = randomUUID();
let lvOffset = 0;
let lvSize = 0;
await t.test('bootable-disk.sh --lvm builds the disk and says where the LV is', async (t) => {
  const t0 = Date.now();
  const r = await execa('bash', [BOOTABLE_DISK, disk, marker, '--lvm'], { reject: false, stdin: 'ignore' });
  t.equal(r.exitCode, 0, 'exits 0', { stderr: String(r.stderr) });
  t.comment(`built in ${secs(t0)} s`);
  const lines = String(r.stdout).trim().split('\n');
  t.equal(lines.length, 3, 'three lines on stdout');
  t.match(lines[0], /^[0-9a-f]{64}$/, 'payload hash');
  t.match(lines[1], /^[0-9a-f]{32}$/, 'machine id');
  const m = /^lv-offset=(\d+) lv-size=(\d+)$/.exec(lines[2] ?? '');
  t.ok(m, `lv-offset=BYTES lv-size=BYTES (${lines[2]})`);
  lvOffset = Number(m?.[1]);
  lvSize = Number(m?.[2]);
  const found = await execa('bash', [LVM_IMAGE, disk, 'bmsnapvg', 'root'], { reject: false, stdin: 'ignore' });
  t.equal(found.stdout.trim(), `${lvOffset} ${lvSize}`, 'lvm-image.sh reads the same range from the image\'s metadata');
  const fsck = await fsckLv(disk, lvOffset, lvSize);
  t.equal(fsck.exitCode, 0, 'the LV holds a clean ext4', { out: fsck.all });
  const missing = await execa('bash', [LVM_IMAGE, disk, 'bmsnapvg', 'nope'], { reject: false, stdin: 'ignore' });
  t.equal(missing.exitCode, 1, 'lvm-image.sh: an LV that is not there, exit 1');
  t.match(missing.stderr, /no bmsnapvg\/nope/, 'and says so');
  const loops = await execa('losetup', ['-j', disk], { reject: false });
  t.equal(loops.stdout.trim(), '', 'no loop device left on the image');
});

await t.test('it boots: LVM root, dm_snapshot and loop loaded, ESP and /boot mountable', async (t) => {
  const jobDir = join(work, 'job');
  await mkdir(jobDir);
  await writeFile(join(jobDir, 'job.sh'), [
    '/bin/busybox mkdir -p /dev/.bin && /bin/busybox --install -s /dev/.bin',
    'export PATH=/dev/.bin',
    'say() { echo "BMSNAP-LVMJOB $*"; }',
    'mount -t sysfs sysfs /sys',
    'say "root=$(awk \'$2 == "/" && $1 != "rootfs" { print $1 }\' /proc/mounts)"',
    'say "misc=$(grep -c device-mapper /proc/misc)"',
    'say "modules=$(for m in dm_mod dm_snapshot loop vfat; do [ -d /sys/module/$m ] && printf "%s," $m; done)"',
    'say "mapper=$(ls /dev/mapper | tr "\\n" ",")"',
    'mount -t vfat /dev/vda2 /boot/efi && say "esp=$(cat /boot/efi/EFI/marker.txt)" || say "esp=FAILED"',
    'mount /dev/vda3 /boot && say "boot=$(ls /boot | tr "\\n" ",")" || say "boot=FAILED"',
    'umount /boot/efi; umount /boot',
    'say done',
    '',
  ].join('\n'));
  const jobDisk = join(work, 'job.img');
  await execa('mkfs.ext4', ['-q', '-F', '-d', jobDir, jobDisk, '8M']);
  vm = new Vm({ name: 'lvm-disk', serialLog: join(work, 'serial.log'), noNetwork: true,
    disks: [{ file: disk, format: 'raw' }, { file: jobDisk, format: 'raw' }] });
  const mk = await vm.waitLine(/BMSNAP-MARKER (\S+) [0-9a-f]{64} machine-id=/, 150);
  t.equal(mk.match[1], marker, 'the marker OS booted from the LV');
  t.comment(`marker after ${mk.seconds.toFixed(1)} s`);
  const job: Record<string, string> = {};
  for (const key of ['root', 'misc', 'modules', 'mapper', 'esp', 'boot']) {
    job[key] = (await vm.waitLine(new RegExp(`BMSNAP-LVMJOB ${key}=(.*)`), 30)).match[1]!.trim();
  }
  await vm.waitLine(/BMSNAP-LVMJOB done/, 30);
  await vm.done;
  t.equal(job.root, '/dev/mapper/bmsnapvg-root', '/ is /dev/mapper/bmsnapvg-root');
  t.equal(job.misc, '1', '/proc/misc has device-mapper');
  t.equal(job.modules, 'dm_mod,dm_snapshot,loop,vfat,', 'dm_mod, dm_snapshot, loop and vfat loaded');
  t.match(job.mapper, /(^|,)bmsnapvg-root,/, '/dev/mapper/bmsnapvg-root survived switch_root');
  t.equal(job.esp, `bmsnap test ESP ${marker}`, 'the ESP mounts (vfat) on /boot/efi');
  t.match(job.boot, /initrd\.img.*vmlinuz/, '/dev/vda3 mounts on /boot: kernel and initrd');
  t.match(job.boot, /(^|,)grub,/, 'and /grub');
});

await t.test('without --lvm: the plain layout as before', async (t) => {
  const plain = join(work, 'plain.raw');
  const r = await execa('bash', [BOOTABLE_DISK, plain, marker], { reject: false, stdin: 'ignore' });
  t.equal(r.exitCode, 0, 'exits 0', { stderr: String(r.stderr) });
  const lines = String(r.stdout).trim().split('\n');
  t.equal(lines.length, 2, 'two lines on stdout');
  t.match(lines[0], /^[0-9a-f]{64}$/, 'payload hash');
  t.match(lines[1], /^[0-9a-f]{32}$/, 'machine id');
  const found = await execa('bash', [LVM_IMAGE, plain, 'bmsnapvg', 'root'], { reject: false, stdin: 'ignore' });
  t.equal(found.exitCode, 1, 'no LV in it');
  await rm(plain);
});
