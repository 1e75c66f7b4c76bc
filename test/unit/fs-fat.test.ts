// FAT12/16/32 probe against real mkfs.vfat images filled with mtools: the zeroed copy (only the
// mapped bytes kept) must pass fsck.vfat -n and hold the same files.
import t, { type Test } from 'tap';
import { mkdir } from 'node:fs/promises';
import { FilesystemError } from '../../agent/src/errors.js';
import { totalLength } from '../../agent/src/map/extents.js';
import { fatProbe } from '../../agent/src/map/filesystems/fat.js';
import { probeFilesystem } from '../../agent/src/map/filesystems/index.js';
import { subReader } from '../../agent/src/source/byte-reader.js';
import { openSource } from '../../agent/src/source/open-source.js';
import {
  assertWellFormed, garbageFile, MiB, patchedReader, probeImage, Scratch, sh, shStatus, treeDigest, u32le,
  writeRandomFiles, zeroedCopy,
} from './fixtures-fs.js';

interface Variant {
  name: string;
  args: string[];
  sizeMiB: number;
  bits: 12 | 16 | 32;
}

const variants: Variant[] = [
  { name: 'FAT12', args: ['-F', '12', '-s', '8'], sizeMiB: 8, bits: 12 },
  { name: 'FAT16', args: ['-F', '16'], sizeMiB: 64, bits: 16 },
  { name: 'FAT16, 4 KiB sectors', args: ['-F', '16', '-S', '4096'], sizeMiB: 64, bits: 16 },
  { name: 'FAT32', args: ['-F', '32', '-s', '1'], sizeMiB: 64, bits: 32 },
];

const KEEP = { 'a.bin': 1 * MiB + 123, 'dir/b.bin': 300_000, 'dir/sub/c.txt': 100, 'dir/sub/d.bin': 5000, 'e.bin': 4097 };
const STALE = { 'stale1.bin': 2 * MiB, 'dir/stale2.bin': 1 * MiB + 5 };
const LATE = { 'late.bin': 70_000 };

/** Copies every file out of IMG with mtools and digests the tree. */
async function contents(s: Scratch, img: string, tag: string): Promise<Record<string, string>> {
  const out = s.path(`out-${tag}`);
  await mkdir(out);
  await sh('mcopy', ['-s', '-n', '-i', img, '::/*', `${out}/`]);
  return treeDigest(out);
}

for (const v of variants) {
  t.test(v.name, async (t) => {
    const s = await Scratch.create(t);
    const img = s.path('fs.img');
    const size = v.sizeMiB * MiB;
    await garbageFile(img, size);
    await sh('mkfs.vfat', [...v.args, '-n', 'BMSNAP', img]);
    const src = s.path('src');
    await writeRandomFiles(src, { ...KEEP, ...STALE });
    await sh('mcopy', ['-s', '-i', img, `${src}/a.bin`, `${src}/e.bin`, `${src}/stale1.bin`, `${src}/dir`, '::/']);
    await sh('mmd', ['-i', img, '::/empty']);
    await sh('mdel', ['-i', img, '::/stale1.bin', '::/dir/stale2.bin']);
    await writeRandomFiles(src, LATE);
    await sh('mcopy', ['-i', img, `${src}/late.bin`, '::/']);

    const fsck = await shStatus('fsck.vfat', ['-n', '-v', img]);
    t.equal(fsck.exitCode, 0, 'the original image is consistent');
    t.match(fsck.output, new RegExp(`${v.bits} bit entries`), `mkfs made FAT${v.bits}`);

    const usage = await probeImage(img);
    if (!usage) throw new Error('fat probe did not recognise the image');
    t.equal(usage.fs, 'vfat');
    t.equal(usage.method, `FAT table (FAT${v.bits})`);
    t.equal(usage.label, 'BMSNAP');
    t.equal(usage.uuid, (await sh('blkid', ['-o', 'value', '-s', 'UUID', img])).trim(), 'uuid as blkid reports it');
    t.notOk(usage.warnings, 'no warnings');
    assertWellFormed(t, usage, size);

    const num = (re: RegExp): number => Number(re.exec(fsck.output)?.[1]);
    const clusterBytes = num(/(\d+) bytes per cluster/);
    t.equal(usage.blockSize, clusterBytes);
    t.equal(totalLength(usage.used), num(/Data area starts at byte (\d+)/) + num(/files, (\d+)\/\d+ clusters/) * clusterBytes,
      'used = metadata area + clusters fsck counts as used');
    t.ok(totalLength(usage.used) < 0.3 * size, `map is small (${totalLength(usage.used)} of ${size})`);

    const copy = s.path('zeroed.img');
    await zeroedCopy(img, copy, usage.used);
    const check = await shStatus('fsck.vfat', ['-n', copy]);
    t.equal(check.exitCode, 0, 'fsck.vfat -n finds nothing wrong in the zeroed copy');
    if (check.exitCode !== 0) t.comment(check.output);
    const before = await contents(s, img, 'orig');
    t.notOk(Object.keys(before).some((n) => n.includes('stale')), 'deleted files are gone');
    t.equal(before['a.bin'], (await treeDigest(src))['a.bin'], 'files read back as written');
    t.same(await contents(s, copy, 'copy'), before, 'the zeroed copy holds the same files');
  });
}

t.test('fat corruption and edge cases', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('small.img');
  await sh('truncate', ['-s', String(16 * MiB), img]);
  await sh('mkfs.vfat', ['-F', '16', img]);
  const src = await openSource(img);
  t.teardown(() => src.close());
  const expectError = async (name: string, reader: Parameters<typeof fatProbe.probe>[0], pattern: RegExp): Promise<void> => {
    const err = await fatProbe.probe(reader).then(() => null, (e: unknown) => e);
    t.ok(err instanceof FilesystemError, `${name}: FilesystemError`);
    t.ok(err instanceof Error && !err.message.includes('\n'), `${name}: one-line message`);
    t.match((err as Error | null)?.message, pattern, `${name}: message`);
  };
  await expectError('absurd sector size', patchedReader(src, [{ offset: 11, bytes: Uint8Array.of(3, 0) }]), /not sane/);
  await expectError('no FATs', patchedReader(src, [{ offset: 16, bytes: Uint8Array.of(0) }]), /not sane/);
  await expectError('bigger than the partition', subReader(src, 0, 8 * MiB), /partition holds/);
  await expectError('FAT size zero', patchedReader(src, [{ offset: 22, bytes: Uint8Array.of(0, 0) }, { offset: 36, bytes: new Uint8Array(4) }]), /FAT size of 0/);

  // Without the type string and the boot signature, a sector is simply not FAT.
  const anonymous = patchedReader(src, [{ offset: 54, bytes: Buffer.from('XXXXXXXX') }, { offset: 510, bytes: Uint8Array.of(0, 0) }]);
  t.equal(await fatProbe.probe(anonymous), null, 'no signature: null');
  t.equal((await probeFilesystem(src))?.fs, 'vfat', 'probeFilesystem picks vfat');
});

/** Throws unless PROBE rejects with a one-line FilesystemError matching PATTERN. */
async function expectRefusal(t: Test, name: string, reader: Parameters<typeof fatProbe.probe>[0], pattern: RegExp): Promise<void> {
  const err = await fatProbe.probe(reader).then(() => null, (e: unknown) => e);
  t.ok(err instanceof FilesystemError, `${name}: FilesystemError`);
  t.ok(err instanceof Error && !err.message.includes('\n'), `${name}: one-line message`);
  t.match((err as Error | null)?.message, pattern, `${name}: message`);
}

const u16 = (n: number): Uint8Array => Uint8Array.of(n & 0xff, n >> 8);

t.test('FAT16: the FAT is cross-checked before it is trusted', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('fat16.img');
  await garbageFile(img, 16 * MiB);
  await sh('mkfs.vfat', ['-F', '16', '-s', '4', img]);
  const src = s.path('src');
  await writeRandomFiles(src, { 'a.bin': 50_000, 'EFI/b.bin': 9000 });
  await sh('mcopy', ['-s', '-i', img, `${src}/a.bin`, `${src}/EFI`, '::/']);
  const r = await openSource(img);
  t.teardown(() => r.close());
  const boot = Buffer.alloc(512);
  await r.readExact(boot, 0);
  const bps = boot.readUInt16LE(11);
  const fatSectors = boot.readUInt16LE(22);
  const fat = (k: number, entry: number): number => (boot.readUInt16LE(14) + k * fatSectors) * bps + entry * 2;
  const root = fat(2, 0);
  const bothFats = (entry: number, value: number) => [0, 1].map((k) => ({ offset: fat(k, entry), bytes: u16(value) }));
  t.equal((await fatProbe.probe(r))?.fs, 'vfat', 'the pristine image maps');

  await expectRefusal(t, 'copies differ', patchedReader(r, [{ offset: fat(1, 5), bytes: u16(0) }]), /FAT copies 1 and 2 differ at entry 5$/);
  await expectRefusal(t, 'entry 0 without the media byte', patchedReader(r, bothFats(0, 0xfff0)), /entry 0 is 0xfff0, not the media byte 0xf8/);
  await expectRefusal(t, 'entry 1 not end of chain', patchedReader(r, bothFats(1, 0x0003)), /entry 1 is 0x3/);
  await expectRefusal(t, 'pointer past the last cluster', patchedReader(r, bothFats(3, 0xfff0)), /entry 3 points to cluster 65520, outside the cluster range/);
  await expectRefusal(t, 'pointer to reserved cluster 1', patchedReader(r, bothFats(3, 1)), /entry 3 points to cluster 1,/);
  await expectRefusal(t, 'entry past the last cluster', patchedReader(r, bothFats(fatSectors * bps / 2 - 1, 0xffff)), /past the last cluster/);
  await expectRefusal(t, 'sectors per cluster doubled', patchedReader(r, [{ offset: 13, bytes: Uint8Array.of(8) }]), /far larger than/);
  await expectRefusal(t, 'sectors per cluster halved', patchedReader(r, [{ offset: 13, bytes: Uint8Array.of(2) }]), /has entries for \d+ of \d+ clusters/);
  await expectRefusal(t, 'root entries not filling sectors', patchedReader(r, [{ offset: 17, bytes: u16(520) }]), /do not fill whole/);
  // 16 more root entries: one more root sector, so the data area (and every cluster) moves.
  await expectRefusal(t, 'data area moved by one sector', patchedReader(r, [{ offset: 17, bytes: u16(boot.readUInt16LE(17) + 16) }]), /does not start with its "\." and "\.\." entries/);
  await expectRefusal(t, 'data area moved back by one sector', patchedReader(r, [{ offset: 17, bytes: u16(boot.readUInt16LE(17) - 16) }]), /does not start with its "\." and "\.\." entries/);
  await expectRefusal(t, 'file size and chain disagree', patchedReader(r, [{ offset: root + 28, bytes: Uint8Array.of(0, 0, 0, 0) }]), /0 bytes in a chain of/);

  // A root directory entry whose chain reaches a free cluster: the FAT lost an allocation.
  const aStart = await (async () => {
    const dir = Buffer.alloc(512);
    await r.readExact(dir, root);
    for (let o = 0; o < 512; o += 32) if (dir.toString('latin1', o, o + 11) === 'A       BIN') return dir.readUInt16LE(o + 26);
    throw new Error('a.bin not found');
  })();
  await expectRefusal(t, 'chain through a free cluster', patchedReader(r, bothFats(aStart + 1, 0)), /reaches cluster \d+, marked free/);

  // One FAT copy: nothing to compare with, so the map is not trusted.
  const single = s.path('single.img');
  await garbageFile(single, 16 * MiB);
  await sh('mkfs.vfat', ['-F', '16', '-f', '1', single]);
  await sh('mcopy', ['-s', '-i', single, `${src}/EFI`, '::/']);
  const one = await openSource(single);
  t.teardown(() => one.close());
  await expectRefusal(t, 'single FAT', one, /a single FAT copy cannot be cross-checked/);

  // Files in the root only: no directory anchors the data area.
  const flat = s.path('flat.img');
  await garbageFile(flat, 16 * MiB);
  await sh('mkfs.vfat', ['-F', '16', flat]);
  await sh('mcopy', ['-i', flat, `${src}/a.bin`, '::/']);
  const f = await openSource(flat);
  t.teardown(() => f.close());
  await expectRefusal(t, 'no subdirectory', f, /no subdirectory in the root directory/);
});

t.test('FAT32: the backup boot sector and the root cluster are checked', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('fat32.img');
  await garbageFile(img, 40 * MiB);
  await sh('mkfs.vfat', ['-F', '32', '-s', '1', img]);
  const r = await openSource(img);
  t.teardown(() => r.close());
  const boot = Buffer.alloc(512);
  await r.readExact(boot, 0);
  const bps = boot.readUInt16LE(11);
  const fatSectors = boot.readUInt32LE(36);
  const rootCluster = boot.readUInt32LE(44);
  const fat = (k: number, entry: number): number => (boot.readUInt16LE(14) + k * fatSectors) * bps + entry * 4;
  t.equal((await fatProbe.probe(r))?.fs, 'vfat', 'the pristine image maps');
  await expectRefusal(t, 'root cluster free', patchedReader(r, [0, 1].map((k) => ({ offset: fat(k, rootCluster), bytes: u32le(0) }))), /root directory cluster 2 is marked free/);
  await expectRefusal(t, 'backup boot sector differs', patchedReader(r, [{ offset: 6 * bps + 13, bytes: Uint8Array.of(2) }]), /boot sector and its backup \(sector 6\) differ at byte 13/);
  await expectRefusal(t, 'sectors per cluster changed in both', patchedReader(r, [0, 6].map((sec) => ({ offset: sec * bps + 13, bytes: Uint8Array.of(4) }))), /far larger than/);
  await expectRefusal(t, 'no backup boot sector', patchedReader(r, [{ offset: 50, bytes: u16(0) }, { offset: 6 * bps + 50, bytes: u16(0) }]), /without a backup boot sector/);
  const noMirror = [0, 6].map((sec) => ({ offset: sec * bps + 40, bytes: u16(0x80) }));
  await expectRefusal(t, 'mirroring off', patchedReader(r, noMirror), /mirroring is off/);
  await expectRefusal(t, 'copies differ', patchedReader(r, [{ offset: fat(1, 9), bytes: u32le(0x0ffffff8) }]), /FAT copies 1 and 2 differ at entry 9$/);
  // The top four bits of a FAT32 entry are reserved: a free entry with them set is still free.
  const topBits = [0, 1].map((k) => ({ offset: fat(k, 100), bytes: u32le(0xf0000000) }));
  t.same((await fatProbe.probe(patchedReader(r, topBits)))?.used, (await fatProbe.probe(r))?.used, 'reserved top bits are ignored');
});
