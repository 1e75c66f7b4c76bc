// The parts of `bmsnap now --mode live` that run without device-mapper (the host kernel has
// none; test/e2e/inband-live.test.ts runs the whole thing in a VM): dm table parsing, mountinfo,
// the capture plan and its refusals (on a sysfs tree laid out like the kernel's), the composed
// source, and the used-block map of a volume (a real ext4 made by mkfs.ext4).
import t from 'tap';
import { execa } from 'execa';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parseTable, tableText } from '../../agent/src/inband/live/dm-table.js';
import { mountedDevices, planLiveCapture } from '../../agent/src/inband/live/disk-mounts.js';
import { composedSource } from '../../agent/src/source/composed-source.js';
import { bufferReader } from '../../agent/src/source/byte-reader.js';
import { openSource, type Source } from '../../agent/src/source/open-source.js';
import { mapVolumes } from '../../agent/src/map/volumes.js';
import { clip, subtract, totalLength } from '../../agent/src/map/extents.js';
import type { DiskMap } from '../../agent/src/map/build-map.js';

t.test('dm tables: linear segments, everything else named', async (t) => {
  const two = '0 2048 linear 254:4 2048\n2048 1024 linear 254:4 8192\n';
  const p = parseTable(two);
  t.same(p, { segments: [{ start: 0, length: 2048, device: '254:4', offset: 2048 }, { start: 2048, length: 1024, device: '254:4', offset: 8192 }] });
  t.equal(tableText((p as { segments: never[] }).segments), two.trim(), 'round trip');
  t.same(parseTable('0 4096 striped 2 128 8:1 0 8:2 0'), { unsupported: 'a striped target' });
  t.same(parseTable('0 4096 crypt aes-xts-plain64 :64:logon:cryptsetup 0 8:3 4096'), { unsupported: 'a crypt target' });
  t.same(parseTable(''), { unsupported: 'an empty table' });
  t.match(parseTable('0 x linear 8:1 0'), { unsupported: /unreadable/ });
  t.match(parseTable('0 8 linear /dev/sda1 0'), { unsupported: /unreadable linear/ });
});

const MOUNTINFO = [
  '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw',
  '23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=1000k',
  '24 22 8:3 / /boot rw,relatime shared:3 - ext4 /dev/sda3 rw',
  '25 24 8:2 / /boot/efi rw,relatime shared:4 - vfat /dev/sda2 rw,fmask=0077',
  '26 22 8:17 / /data rw,relatime shared:5 - xfs /dev/sdb1 rw',
  '27 22 254:0 /srv /srv\\040x rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw',
  '28 22 8:5 / /mnt/old ro,relatime shared:6 - ext4 /dev/sda5 ro',
  '29 22 0:30 / /tmp rw shared:7 - tmpfs tmpfs rw',
].join('\n');

t.test('mountinfo: one entry per block device, escapes decoded, superblock ro', async (t) => {
  const m = mountedDevices(MOUNTINFO);
  t.same(m.map((d) => d.majMin), ['254:0', '8:3', '8:2', '8:17', '8:5'], 'no 0:N (devtmpfs, tmpfs)');
  t.same(m[0]!.mountpoints, ['/', '/srv x'], 'the bind mount is the same device; \\040 is a space; shortest first');
  t.equal(m.find((d) => d.majMin === '8:5')!.readOnly, true);
  t.equal(m.find((d) => d.majMin === '8:3')!.readOnly, false);
  t.equal(m.find((d) => d.majMin === '8:2')!.fstype, 'vfat');
});

/** A sysfs tree like the kernel's: /sys/dev/block/M:m links to device dirs. */
async function fakeSys(t: { teardown(fn: () => unknown): void }, extraDm: { name: string; majMin: string; slaves: string[] }[] = []): Promise<string> {
  const sys = await mkdtemp(join(tmpdir(), 'bmsnap-sys-'));
  t.teardown(() => rm(sys, { recursive: true, force: true }));
  const link = async (majMin: string, dir: string) => {
    await mkdir(join(sys, 'dev/block'), { recursive: true });
    await symlink(relative(join(sys, 'dev/block'), dir), join(sys, 'dev/block', majMin));
    await writeFile(join(dir, 'dev'), `${majMin}\n`);
  };
  const disk = async (name: string, major: number, parts: [number, number][]) => {
    const d = join(sys, 'devices/pci0000:00/block', name);
    await mkdir(d, { recursive: true });
    await link(`${major}:${major === 8 && name === 'sdb' ? 16 : 0}`, d);
    for (const [n, start] of parts) {
      const p = join(d, `${name}${n}`);
      await mkdir(p, { recursive: true });
      await writeFile(join(p, 'partition'), `${n}\n`);
      await writeFile(join(p, 'start'), `${start}\n`);
      await link(`${major}:${(name === 'sdb' ? 16 : 0) + n}`, p);
    }
  };
  await disk('sda', 8, [[1, 2048], [2, 4096], [3, 69632], [4, 200704], [5, 900000]]);
  await disk('sdb', 8, [[1, 2048]]);
  for (const dm of [{ name: 'vg-root', majMin: '254:0', slaves: ['sda/sda4'] }, ...extraDm]) {
    const d = join(sys, 'devices/virtual/block', `dm-${dm.majMin.split(':')[1]}`);
    await mkdir(join(d, 'dm'), { recursive: true });
    await mkdir(join(d, 'slaves'), { recursive: true });
    await writeFile(join(d, 'dm/name'), `${dm.name}\n`);
    for (const s of dm.slaves) {
      const target = s.startsWith('dm-') ? join(sys, 'devices/virtual/block', s) : join(sys, 'devices/pci0000:00/block', s);
      await symlink(relative(join(d, 'slaves'), target), join(d, 'slaves', s.split('/').pop()!));
    }
    await link(dm.majMin, d);
  }
  return sys;
}

t.test('plan: LVM root snapshotted, plain /boot and ESP held, read-only and other disks left alone', async (t) => {
  const sys = await fakeSys(t);
  const tables: Record<string, string> = { 'vg-root': '0 409600 linear 8:4 2048\n409600 8192 linear 8:4 600000' };
  const plan = await planLiveCapture('sda', MOUNTINFO, { sys, dmTable: async (n) => tables[n]! });
  t.same(plan.volumes.map((v) => [v.name, v.mountpoints]), [['vg-root', ['/', '/srv x']]]);
  t.same(plan.volumes[0]!.onDisk, [
    { volumeOffset: 0, diskOffset: (200704 + 2048) * 512, length: 409600 * 512 },
    { volumeOffset: 409600 * 512, diskOffset: (200704 + 600000) * 512, length: 8192 * 512 },
  ], 'each segment placed on the disk: partition start + offset');
  t.same(plan.plain.map((p) => [p.mountpoint, p.device, p.fstype]), [['/boot', '/dev/sda3', 'ext4'], ['/boot/efi', '/dev/sda2', 'vfat']]);
  t.same(plan.readOnly, ['/mnt/old']);
  t.notOk(JSON.stringify(plan).includes('/data'), '/data on sdb is not this disk\'s business');
});

t.test('plan refusals: one line each, naming what and why', async (t) => {
  const sys = await fakeSys(t, [
    { name: 'crypt-home', majMin: '254:1', slaves: ['sda/sda1'] },
    { name: 'vg-home', majMin: '254:2', slaves: ['dm-1'] },
    { name: 'vg-wide', majMin: '254:3', slaves: ['sda/sda1', 'sdb/sdb1'] },
  ]);
  const tables: Record<string, string> = { 'vg-root': '0 8 linear 8:4 0', 'crypt-home': '0 8 crypt aes :64:logon:x 0 8:1 0', 'vg-home': '0 8 linear 254:1 0' };
  const deps = { sys, dmTable: async (n: string) => tables[n]! };
  const plainRoot = MOUNTINFO.replace('254:0 / / rw', '8:3 / / rw');
  await t.rejects(planLiveCapture('sda', plainRoot, deps), { code: 'BMSNAP_REFUSED', message: /^\/ is mounted straight from the partition \/dev\/sda3: .*use --mode kexec$/ });
  const with_ = (line: string) => `${MOUNTINFO}\n${line}`;
  await t.rejects(planLiveCapture('sda', with_('30 22 254:1 / /secret rw shared:8 - ext4 /dev/mapper/crypt-home rw'), deps),
    { message: /^\/secret \(on crypt-home\) is a crypt target: live mode snapshots linear \(LVM\) volumes only; use --mode kexec$/ });
  await t.rejects(planLiveCapture('sda', with_('30 22 254:2 / /home rw shared:8 - ext4 /dev/mapper/vg-home rw'), deps),
    { message: /^\/home \(on vg-home\) is device-mapper stacked on device-mapper/ });
  await t.rejects(planLiveCapture('sda', with_('30 22 254:3 / /wide rw shared:8 - ext4 /dev/mapper/vg-wide rw'), deps),
    { message: /^\/wide \(on vg-wide\) spans sda, sdb: live mode images one disk/ });
  const ro = await planLiveCapture('sda', with_('30 22 254:1 / /secret ro shared:8 - ext4 /dev/mapper/crypt-home ro'), deps);
  t.same(ro.readOnly, ['/mnt/old', '/secret'], 'a read-only crypt volume is fine: nothing writes it');
});

/** A Source over a buffer (what openSource gives, for pure tests). */
function bufferSource(data: Buffer): Source {
  return { ...bufferReader(data), path: 'mem', kind: 'file', sectorSize: 512, close: async () => undefined };
}

t.test('composed source: overlay ranges come from their reader, the rest from the base', async (t) => {
  const base = Buffer.alloc(64 * 1024, 0xaa);
  const snap = Buffer.alloc(32 * 1024);
  for (let i = 0; i < snap.length; i++) snap[i] = i % 251;
  const src = composedSource(bufferSource(base), [
    { offset: 40960, length: 8192, reader: bufferReader(snap), from: 16384 },
    { offset: 4096, length: 4096, reader: bufferReader(snap), from: 0 },
  ], 'composed', async () => undefined);
  const expect = Buffer.from(base);
  snap.copy(expect, 4096, 0, 4096);
  snap.copy(expect, 40960, 16384, 16384 + 8192);
  for (const [pos, len] of [[0, 65536], [4000, 200], [4096, 4096], [8000, 33000], [40960 + 100, 9000], [65535, 1]] as const) {
    const buf = Buffer.alloc(len);
    await src.readExact(buf, pos);
    t.ok(buf.equals(expect.subarray(pos, pos + len)), `read [${pos}, +${len})`);
  }
  await t.rejects(src.readExact(Buffer.alloc(2), 65535), { code: 'BMSNAP_SOURCE' }, 'past the end');
  t.throws(() => composedSource(bufferSource(base), [{ offset: 0, length: 4096, reader: bufferReader(snap), from: 0 }, { offset: 2048, length: 4096, reader: bufferReader(snap), from: 0 }], 'x', async () => undefined), /overlap/);
  t.throws(() => composedSource(bufferSource(base), [{ offset: 0, length: 4096, reader: bufferReader(snap), from: 30000 }], 'x', async () => undefined), /does not fit/);
});

t.test('extents: subtract', async (t) => {
  t.same(subtract([{ offset: 0, length: 100 }, { offset: 200, length: 100 }], [{ offset: 50, length: 200 }]),
    [{ offset: 0, length: 50 }, { offset: 250, length: 50 }]);
  t.same(subtract([{ offset: 0, length: 10 }], []), [{ offset: 0, length: 10 }]);
  t.same(subtract([{ offset: 0, length: 10 }], [{ offset: 0, length: 10 }]), []);
});

t.test('a volume in two segments: only its filesystem\'s used blocks are kept, at their disk places', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bmsnap-vol-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const img = join(dir, 'vol.ext4');
  await mkdir(join(dir, 'tree'));
  await writeFile(join(dir, 'tree/data'), Buffer.alloc(3 * 2 ** 20, 1));
  await execa('mkfs.ext4', ['-q', '-F', '-d', join(dir, 'tree'), img, '32M']);
  const vol = await openSource(img);
  t.teardown(() => vol.close());
  const MiB = 2 ** 20;
  // the volume's first 16 MiB lie at 100 MiB on the disk, the rest at 300 MiB; the partition
  // (the physical volume) spans [90, 400) MiB and is kept whole by the plain map
  const map: DiskMap = {
    size: 512 * MiB, sectorSize: 512, table: { type: 'gpt' }, partitions: [], outsideBytes: MiB,
    used: [{ offset: 0, length: MiB }, { offset: 90 * MiB, length: 310 * MiB }], usedBytes: 311 * MiB, warnings: [],
  };
  const segments = [{ volumeOffset: 0, diskOffset: 100 * MiB, length: 16 * MiB }, { volumeOffset: 16 * MiB, diskOffset: 300 * MiB, length: 16 * MiB }];
  const out = await mapVolumes(map, [{ name: 'vg-root', reader: vol, segments }]);
  t.equal(out.volumes?.[0]?.fs, 'ext4');
  const fsUsed = out.volumes![0]!.usedBytes;
  t.ok(fsUsed >= 3 * MiB && fsUsed < 12 * MiB, `ext4 uses ${fsUsed} bytes of 32 MiB`);
  t.equal(out.usedBytes, map.usedBytes - 32 * MiB + fsUsed, 'the volume\'s 32 MiB are replaced by what its filesystem uses');
  const inside = (a: number, b: number) => totalLength(clip(out.used, a, b - a));
  t.equal(inside(100 * MiB, 116 * MiB) + inside(300 * MiB, 316 * MiB), fsUsed, 'all of it inside the two segments');
  t.equal(inside(0, MiB), MiB, 'outside the volume: unchanged');
  t.equal(inside(90 * MiB, 100 * MiB), 10 * MiB, 'the partition before the volume: still whole');
  t.equal(inside(116 * MiB, 300 * MiB), 184 * MiB, 'and between its segments');
});
