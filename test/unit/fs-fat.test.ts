// FAT12/16/32 probe against real mkfs.vfat images filled with mtools: the zeroed copy (only the
// mapped bytes kept) must pass fsck.vfat -n and hold the same files.
import t from 'tap';
import { mkdir } from 'node:fs/promises';
import { FilesystemError } from '../../agent/src/errors.js';
import { totalLength } from '../../agent/src/map/extents.js';
import { fatProbe } from '../../agent/src/map/filesystems/fat.js';
import { probeFilesystem } from '../../agent/src/map/filesystems/index.js';
import { subReader } from '../../agent/src/source/byte-reader.js';
import { openSource } from '../../agent/src/source/open-source.js';
import {
  assertWellFormed, garbageFile, MiB, patchedReader, probeImage, Scratch, sh, shStatus, treeDigest,
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
