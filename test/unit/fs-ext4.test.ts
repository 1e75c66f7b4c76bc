// ext2/3/4 probe against real mke2fs images: the zeroed copy (only the mapped bytes kept) must
// pass e2fsck and hold the same files, and the map must agree with the superblock's counts.
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { FilesystemError } from '../../agent/src/errors.js';
import { crc32cUpdate } from '../../agent/src/map/crc32c.js';
import { totalLength, type Extent } from '../../agent/src/map/extents.js';
import { extProbe } from '../../agent/src/map/filesystems/ext4.js';
import { probeFilesystem } from '../../agent/src/map/filesystems/index.js';
import type { FsUsage } from '../../agent/src/map/filesystems/types.js';
import { subReader } from '../../agent/src/source/byte-reader.js';
import { openSource } from '../../agent/src/source/open-source.js';
import {
  assertWellFormed, garbageFile, MiB, patchedReader, probeImage, Scratch, sh, shStatus, treeDigest,
  u32le, writeRandomFiles, zeroedCopy,
} from './fixtures-fs.js';

interface Variant {
  name: string;
  args: string[];
  sizeMiB: number;
  fs: 'ext2' | 'ext3' | 'ext4';
  /** The host kernel cannot mount 64 KiB blocks: populate with mke2fs -d and debugfs instead. */
  mountable?: false;
  /** Group descriptor flag we want the image to exercise. */
  expectBlockUninit?: boolean;
}

const variants: Variant[] = [
  { name: 'ext2, 1 KiB blocks', args: ['-t', 'ext2', '-b', '1024'], sizeMiB: 64, fs: 'ext2' },
  { name: 'ext3, 4 KiB blocks', args: ['-t', 'ext3', '-b', '4096', '-g', '4096'], sizeMiB: 64, fs: 'ext3' },
  { name: 'ext4 default (64bit, flex_bg, metadata_csum)', args: ['-t', 'ext4', '-b', '4096', '-g', '2048'], sizeMiB: 96, fs: 'ext4', expectBlockUninit: true },
  { name: 'ext4, 1 KiB blocks', args: ['-t', 'ext4', '-b', '1024'], sizeMiB: 64, fs: 'ext4', expectBlockUninit: true },
  { name: 'ext4 bigalloc, 16 KiB clusters', args: ['-t', 'ext4', '-b', '4096', '-O', 'bigalloc', '-C', '16384', '-g', '2048'], sizeMiB: 128, fs: 'ext4' },
  { name: 'ext4 bigalloc, 1 KiB blocks', args: ['-t', 'ext4', '-b', '1024', '-O', 'bigalloc', '-C', '4096'], sizeMiB: 64, fs: 'ext4' },
  { name: 'ext4 meta_bg without resize_inode', args: ['-t', 'ext4', '-b', '1024', '-O', 'meta_bg,^resize_inode', '-g', '1024'], sizeMiB: 64, fs: 'ext4', expectBlockUninit: true },
  { name: 'ext4 32-bit descriptors with uninit_bg', args: ['-t', 'ext4', '-b', '4096', '-O', '^64bit,^metadata_csum,uninit_bg', '-g', '1024'], sizeMiB: 64, fs: 'ext4', expectBlockUninit: true },
  { name: 'ext4 sparse_super2', args: ['-t', 'ext4', '-b', '4096', '-O', 'sparse_super2', '-g', '1024'], sizeMiB: 64, fs: 'ext4' },
  { name: 'ext4 without sparse_super (backups in every group)', args: ['-t', 'ext4', '-b', '4096', '-O', '^sparse_super,^resize_inode', '-g', '2048'], sizeMiB: 64, fs: 'ext4', expectBlockUninit: true },
  { name: 'ext4 without flex_bg', args: ['-t', 'ext4', '-b', '4096', '-O', '^flex_bg', '-g', '2048'], sizeMiB: 64, fs: 'ext4', expectBlockUninit: true },
  // A journal is at least 1024 blocks, 64 MiB here: leave it out to keep the image small.
  { name: 'ext4, 64 KiB blocks', args: ['-t', 'ext4', '-b', '65536', '-O', '^has_journal'], sizeMiB: 128, fs: 'ext4', mountable: false },
];

const KEEP = { 'a.bin': 3 * MiB + 123, 'dir/b.bin': 300_000, 'dir/sub/c.txt': 100, 'dir/sub/d.bin': 5000, 'e.bin': 1 * MiB };
const STALE = { 'stale1.bin': 6 * MiB, 'dir/stale2.bin': 4 * MiB, 'stale3.bin': 2 * MiB + 7 };
const LATE = { 'late.bin': 700_000 }; // written after the deletions, may reuse freed blocks

/**
 * Inode-table blocks the probe leaves out, from dumpe2fs: with group checksums, the blocks of
 * each group's table that hold only inodes past inodes_per_group - bg_itable_unused.
 */
async function unusedInodeTableBlocks(img: string): Promise<number> {
  const out = await sh('dumpe2fs', [img]);
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(out)?.[1]);
  if (!/^Filesystem features:.*(metadata_csum|uninit_bg)/m.test(out)) return 0;
  const ipg = field('Inodes per group');
  const isz = field('Inode size');
  const bs = field('Block size');
  const itb = field('Inode blocks per group');
  let n = 0;
  for (const group of out.split(/^Group \d+:/m).slice(1)) {
    const unused = /INODE_UNINIT/.test(group.split('\n')[0]!) ? ipg : Number(/(\d+) unused inodes/.exec(group)?.[1] ?? 0);
    n += itb - Math.ceil(((ipg - unused) * isz) / bs);
  }
  return n;
}

async function superCounts(img: string): Promise<{ blockCount: number; freeBlocks: number; blockSize: number }> {
  const out = await sh('dumpe2fs', ['-h', img]);
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(out)?.[1]);
  return { blockCount: field('Block count'), freeBlocks: field('Free blocks'), blockSize: field('Block size') };
}

/** Builds the image; returns what the probe said while the kernel had it mounted read-write. */
async function build(s: Scratch, v: Variant, img: string): Promise<FsUsage | null | undefined> {
  await garbageFile(img, v.sizeMiB * MiB);
  // nodiscard: mke2fs would otherwise punch the garbage out of a file image
  const mkfs = ['-q', '-F', '-E', 'nodiscard', ...v.args];
  if (v.mountable === false) {
    const src = s.path('src');
    await writeRandomFiles(src, { ...KEEP, ...STALE });
    await sh('mke2fs', [...mkfs, '-d', src, img]);
    const cmds = s.path('rm.cmds');
    await writeFile(cmds, Object.keys(STALE).map((n) => `rm /${n}\n`).join(''));
    await sh('debugfs', ['-w', '-f', cmds, img]);
    return undefined;
  }
  await sh('mke2fs', [...mkfs, img]);
  return s.withMount(img, 'noinit_itable', async (dir) => {
    await writeRandomFiles(dir, { ...KEEP, ...STALE });
    await sh('ln', ['-s', 'dir/b.bin', `${dir}/link`]);
    await sh('sync', ['-f', dir]);
    await sh('rm', Object.keys(STALE).map((n) => `${dir}/${n}`));
    await sh('sync', ['-f', dir]);
    await writeRandomFiles(dir, LATE);
    return probeImage(img);
  });
}

async function contents(s: Scratch, v: Variant, img: string, tag: string): Promise<Record<string, string>> {
  if (v.mountable === false) {
    const out = s.path(`dump-${tag}`);
    await sh('mkdir', ['-p', out]);
    await sh('debugfs', ['-R', `rdump / ${out}`, img]);
    return treeDigest(out);
  }
  // noload (no journal replay) is refused for a journal-less ext2
  return s.withMount(img, v.fs === 'ext2' ? 'ro' : 'ro,noload', (dir) => treeDigest(dir));
}

for (const v of variants) {
  t.test(v.name, async (t) => {
    const s = await Scratch.create(t);
    const img = s.path('fs.img');
    const live = await build(s, v, img);
    const fsck = await shStatus('e2fsck', ['-fn', img]);
    t.equal(fsck.exitCode, 0, 'the original image is consistent');
    if (live !== undefined) {
      // Mounted, the on-disk bitmaps may lag behind: the whole filesystem must be kept.
      t.same(live?.used, [{ offset: 0, length: v.sizeMiB * MiB }], 'while mounted: whole filesystem');
      t.match(live?.warnings?.[0], /may be stale/, 'while mounted: warning');
    }

    if (v.expectBlockUninit) {
      t.match(await sh('dumpe2fs', [img]), /BLOCK_UNINIT/, 'image has BLOCK_UNINIT groups');
    }
    const usage = await probeImage(img);
    if (!usage) throw new Error('ext probe did not recognise the image');
    const size = v.sizeMiB * MiB;
    t.equal(usage.fs, v.fs);
    t.equal(usage.method, `${v.fs} block bitmaps`);
    t.notOk(usage.warnings, 'no warnings');
    t.match(usage.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-/);
    assertWellFormed(t, usage, size);

    const counts = await superCounts(img);
    t.equal(usage.blockSize % counts.blockSize, 0, 'allocation unit is a whole number of blocks');
    // The never-used tail of each inode table is left out (with group checksums); with bigalloc
    // the map is widened back to whole clusters, so the saving is at most that.
    const inUse = (counts.blockCount - counts.freeBlocks) * counts.blockSize;
    const unusedItable = (await unusedInodeTableBlocks(img)) * counts.blockSize;
    if (usage.blockSize === counts.blockSize) {
      t.equal(totalLength(usage.used), inUse - unusedItable,
        'used bytes = (blocks count - free blocks - never-used inode-table blocks) * block size');
    } else {
      t.ok(totalLength(usage.used) <= inUse && totalLength(usage.used) >= inUse - unusedItable,
        'bigalloc: used bytes between in-use minus never-used inode-table blocks and in-use');
    }
    t.ok(totalLength(usage.used) < 0.3 * size, `map is small (${totalLength(usage.used)} of ${size})`);

    const copy = s.path('zeroed.img');
    await zeroedCopy(img, copy, usage.used);
    const check = await shStatus('e2fsck', ['-fn', copy]);
    t.equal(check.exitCode, 0, 'e2fsck -fn finds nothing wrong in the zeroed copy');
    if (check.exitCode !== 0) t.comment(check.output);

    const before = await contents(s, v, img, 'orig');
    const after = await contents(s, v, copy, 'copy');
    t.ok(Object.keys(before).length >= Object.keys(KEEP).length, 'files are there');
    t.notOk(Object.keys(before).some((n) => n.includes('stale')), 'deleted files are gone');
    t.same(after, before, 'the zeroed copy holds the same files');
  });
}

t.test('ext corruption and edge cases', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('small.img');
  await garbageFile(img, 32 * MiB);
  await sh('mke2fs', ['-q', '-F', '-E', 'nodiscard', '-t', 'ext4', '-b', '4096', '-g', '1024', img]);
  const src = await openSource(img);
  t.teardown(() => src.close());
  const SB = 1024;
  const expectError = async (name: string, patches: { offset: number; bytes: Uint8Array }[], pattern: RegExp): Promise<void> => {
    await t.rejects(extProbe.probe(patchedReader(src, patches)), FilesystemError, name);
    const err = await extProbe.probe(patchedReader(src, patches)).catch((e: unknown) => e);
    t.ok(err instanceof FilesystemError && !err.message.includes('\n'), `${name}: one-line FilesystemError`);
    t.match((err as Error).message, pattern, `${name}: message`);
  };
  await expectError('absurd block size', [{ offset: SB + 0x18, bytes: u32le(25) }], /block size/);
  await expectError('block count beyond the partition', [{ offset: SB + 0x04, bytes: u32le(32 * 256 + 1) }], /partition holds/);
  // 64-bit descriptors at block 1: group 3's block bitmap pointer (low half) far past the end.
  await expectError('descriptor outside the fs', [{ offset: 4096 + 3 * 64, bytes: u32le(10_000_000) }], /group 3: block bitmap .* outside/);
  await expectError('bad descriptor size', [{ offset: SB + 0xfe, bytes: Uint8Array.of(48, 0) }], /descriptor size/);
  // A partition start moved onto group 1 (4 MiB in, at -g 1024): the backup superblock sits at
  // byte 1024 of the window, and must not be mapped as if it were the filesystem's start.
  const shifted = subReader(src, 4 * MiB - SB, 16 * MiB);
  const shiftedErr = await extProbe.probe(shifted).then(() => null, (e: unknown) => e);
  t.ok(shiftedErr instanceof FilesystemError, 'partition starting at a backup superblock: FilesystemError');
  t.match((shiftedErr as Error | null)?.message, /backup of group 1/, 'names the backup superblock');

  // needs_recovery (as when mounted or crashed): the whole filesystem is kept, with a warning.
  const incompat = Buffer.alloc(4);
  await src.readExact(incompat, SB + 0x60);
  // metadata_csum: the patched superblock must carry a matching checksum to get that far.
  const recovering = await extProbe.probe(patchedReader(src, await resigned(src, [{ offset: 0x60, bytes: u32le(incompat.readUInt32LE() | 0x4) }])));
  t.same(recovering?.used, [{ offset: 0, length: 32 * MiB }], 'needs_recovery: whole fs mapped');
  t.match(recovering?.warnings?.[0], /recovery/);

  // Not ext at all.
  t.equal(await extProbe.probe(patchedReader(src, [{ offset: SB + 0x38, bytes: Uint8Array.of(0, 0) }])), null, 'no magic: null');
  t.equal((await probeFilesystem(src))?.fs, 'ext4', 'probeFilesystem picks ext4');
});

/** Patches (offsets inside the superblock) applied to the superblock, with its crc32c redone. */
async function resigned(src: { readExact(b: Uint8Array, p: number): Promise<void> }, patches: { offset: number; bytes: Uint8Array }[]): Promise<{ offset: number; bytes: Uint8Array }[]> {
  const sb = Buffer.alloc(1024);
  await src.readExact(sb, 1024);
  for (const p of patches) sb.set(p.bytes, p.offset);
  sb.writeUInt32LE(crc32cUpdate(0xffffffff, sb.subarray(0, 0x3fc)), 0x3fc);
  return [{ offset: 1024, bytes: sb }];
}

function covers(used: readonly Extent[], offset: number, length: number): boolean {
  return used.some((e) => e.offset <= offset && e.offset + e.length >= offset + length);
}

for (const [type, what] of [['ext3', 'indirect blocks'], ['ext4', 'extents']] as const) {
  t.test(`${type} journal (${what}) is kept even when the bitmaps lose it`, async (t) => {
    const s = await Scratch.create(t);
    const img = s.path('j.img');
    await sh('truncate', ['-s', String(32 * MiB), img]);
    await sh('mke2fs', ['-q', '-F', '-t', type, '-b', '4096', '-g', '1024', img]);
    const bs = 4096;
    const first = Number(/(\d+)/.exec(await sh('debugfs', ['-R', 'bmap <8> 0', img]))?.[1]);
    const journalBytes = Number(/Size: (\d+)/.exec(await sh('debugfs', ['-R', 'stat <8>', img]))?.[1]);
    t.ok(first > 0 && journalBytes >= MiB, `journal at block ${first}, ${journalBytes} bytes`);
    const src = await openSource(img);
    t.teardown(() => src.close());
    const intact = await extProbe.probe(src);
    t.ok(intact && covers(intact.used, first * bs, journalBytes), 'journal mapped from the bitmaps');
    t.notOk(intact?.warnings, 'no warnings when the bitmaps are right');

    // Blank every block bitmap. Before issue 11 the journal was then mapped from the superblock's
    // copy of its block map alone; now the damage itself is caught (checksum or free count) and
    // the whole partition gets copied.
    const bitmaps = [...(await sh('dumpe2fs', [img])).matchAll(/Block bitmap at (\d+)/g)].map((m) => Number(m[1]));
    const blank = patchedReader(src, bitmaps.map((b) => ({ offset: b * bs, bytes: new Uint8Array(bs) })));
    const err = await extProbe.probe(blank).catch((e: unknown) => e);
    t.ok(err instanceof FilesystemError, 'blanked bitmaps are refused');
    t.match((err as Error).message, /block bitmap (checksum mismatch|has \d+ free)/);
  });
}

/** Per-group metadata locations and free ranges, from dumpe2fs. */
async function groupsOf(img: string): Promise<{ blockBitmap: number; inodeBitmap: number; firstFree?: number; flags: string }[]> {
  const out = await sh('dumpe2fs', [img]);
  return out.split(/^Group \d+:/m).slice(1).map((group) => {
    const at = (what: string): number => Number(new RegExp(`${what} at (\\d+)`).exec(group)![1]);
    const free = /Free blocks: (\d+)/.exec(group);
    return { blockBitmap: at('Block bitmap'), inodeBitmap: at('Inode bitmap'), ...(free ? { firstFree: Number(free[1]) } : {}), flags: group.split('\n')[0]! };
  });
}

/** The byte at OFFSET of SRC with MASK XORed in. */
async function flipped(src: { readExact(b: Uint8Array, p: number): Promise<void> }, offset: number, mask: number): Promise<{ offset: number; bytes: Uint8Array }> {
  const b = Buffer.alloc(1);
  await src.readExact(b, offset);
  return { offset, bytes: Uint8Array.of(b[0]! ^ mask) };
}

t.test('ext metadata checks (issue 11): damage is refused in one line', async (t) => {
  const s = await Scratch.create(t);
  const expectError = async (src: Parameters<typeof patchedReader>[0], name: string, patches: { offset: number; bytes: Uint8Array }[], pattern: RegExp): Promise<void> => {
    const err = await extProbe.probe(patchedReader(src, patches)).then(() => null, (e: unknown) => e);
    t.ok(err instanceof FilesystemError && !err.message.includes('\n'), `${name}: one-line FilesystemError`);
    t.match((err as Error | null)?.message, pattern, `${name}: ${(err as Error | null)?.message}`);
  };
  const bs = 4096;
  const SB = 1024;

  // metadata_csum, 64-bit descriptors at block 1.
  const csumImg = s.path('csum.img');
  await garbageFile(csumImg, 32 * MiB);
  await sh('mke2fs', ['-q', '-F', '-E', 'nodiscard', '-t', 'ext4', '-b', '4096', '-g', '1024', csumImg]);
  const csum = await openSource(csumImg);
  t.teardown(() => csum.close());
  t.ok(await extProbe.probe(csum), 'pristine metadata_csum image maps');
  const cg = await groupsOf(csumImg);
  const D = (g: number): number => bs + g * 64;
  await expectError(csum, 'superblock checksum', [await flipped(csum, SB + 0x2c, 0x10)], /^ext superblock: checksum mismatch/);
  await expectError(csum, 'descriptor checksum (crc32c)', [await flipped(csum, D(2) + 0x10, 0x01)], /^ext group 2: descriptor checksum mismatch/);
  await expectError(csum, 'block bitmap checksum', [await flipped(csum, cg[0]!.blockBitmap * bs + 100, 0x01)], /^ext group 0: block bitmap checksum mismatch/);
  await expectError(csum, 'free blocks total', await resigned(csum, [{ offset: 0x0c, bytes: u32le(1234) }]), /group descriptors count \d+ free blocks, the superblock 1234/);
  await expectError(csum, 'overlapping metadata', [{ offset: D(1) + 0x04, bytes: u32le(cg[0]!.blockBitmap) }], /group 0 block bitmap and group 1 inode bitmap overlap/);
  await expectError(csum, 'unused inodes beyond the group', [{ offset: D(0) + 0x1c, bytes: Uint8Array.of(0xff, 0xff) }], /group 0: 65535 unused inodes in a group of/);
  const cipg = Number(/Inodes per group:\s+(\d+)/.exec(await sh('dumpe2fs', ['-h', csumImg]))?.[1]);
  const u16 = (n: number): Uint8Array => Uint8Array.of(n & 0xff, n >> 8);
  await expectError(csum, 'reserved inodes in the unused part', [{ offset: D(0) + 0x1c, bytes: u16(cipg - 5) }], /^ext group 0: only 5 inodes may be in use, fewer than the 10 reserved ones$/);
  await expectError(csum, 'free count beyond the group', [{ offset: D(0) + 0x0c, bytes: Uint8Array.of(0xff, 0xff) }], /group 0: 65535 free clusters in a group of 1024/);

  // uninit_bg (crc16 descriptors), bitmaps without checksums; files written through the kernel.
  const gdtImg = s.path('gdt.img');
  await garbageFile(gdtImg, 32 * MiB);
  await sh('mke2fs', ['-q', '-F', '-E', 'nodiscard', '-t', 'ext4', '-b', '4096', '-g', '1024', '-O', '^metadata_csum,uninit_bg', gdtImg]);
  await s.withMount(gdtImg, 'noinit_itable', (dir) => writeRandomFiles(dir, { 'a.bin': 600_000, 'b/c.bin': 50_000 }));
  t.match(await sh('dumpe2fs', ['-h', gdtImg]), /features:.*uninit_bg/, 'image has uninit_bg');
  const gdt = await openSource(gdtImg);
  t.teardown(() => gdt.close());
  t.ok(await extProbe.probe(gdt), 'pristine uninit_bg image maps');
  const gg = await groupsOf(gdtImg);
  await expectError(gdt, 'descriptor checksum (crc16)', [await flipped(gdt, D(1) + 0x10, 0x01)], /^ext group 1: descriptor checksum mismatch/);
  await expectError(gdt, 'free blocks total (no superblock checksum)', [{ offset: SB + 0x0c, bytes: u32le(1234) }], /the superblock 1234$/);
  const g0free = gg[0]!.firstFree!;
  await expectError(gdt, 'bitmap free count', [await flipped(gdt, gg[0]!.blockBitmap * bs + (g0free >> 3), 1 << (g0free & 7))],
    /^ext group 0: block bitmap has \d+ free clusters, the descriptor says \d+$/);
  // A used data block cleared and a free one set in the same bitmap: the free count still holds,
  // the inodes catch it.
  const data = Number(/(\d+)/.exec(await sh('debugfs', ['-R', 'bmap /a.bin 0', gdtImg]))?.[1]);
  const dg = Math.floor(data / 1024);
  const spare = gg[dg]!.firstFree!;
  t.ok(spare > data && Math.floor(spare / 1024) === dg, `data block ${data} and free block ${spare} in group ${dg}`);
  const bitmapAt = gg[dg]!.blockBitmap * bs;
  await expectError(gdt, 'bitmap bits swapped (count kept)', [
    await flipped(gdt, bitmapAt + ((data % 1024) >> 3), 1 << (data % 8)),
    await flipped(gdt, bitmapAt + ((spare % 1024) >> 3), 1 << (spare % 8)),
  ], /^ext inode 12: data extent \d+\+\d+ is in use but free in the block bitmap$/);
  // The inode bitmap marks an inode in the never-used part of group 0's table.
  const ipg = Number(/Inodes per group:\s+(\d+)/.exec(await sh('dumpe2fs', ['-h', gdtImg]))?.[1]);
  await expectError(gdt, 'inode past bg_itable_unused', [await flipped(gdt, gg[0]!.inodeBitmap * bs + (ipg >> 3) - 1, 0x80)], /^ext group 0: inode bitmap marks inodes in the never-used part/);
});

t.test('ext inode tables: the never-used tail is left out, the copy is still whole', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('itable.img');
  const size = 128 * MiB;
  await garbageFile(img, size);
  // Many inodes (one per 4 KiB), so the inode tables are a large part of the metadata.
  await sh('mke2fs', ['-q', '-F', '-E', 'nodiscard', '-t', 'ext4', '-T', 'default', '-i', '4096', '-g', '8192', img]);
  await s.withMount(img, 'noinit_itable', async (dir) => {
    const files: Record<string, number> = {};
    for (let i = 0; i < 300; i++) files[`d${i % 7}/f${i}.bin`] = 1000 + i * 37;
    await writeRandomFiles(dir, { ...files, ...KEEP, ...STALE });
    await sh('sync', ['-f', dir]);
    await sh('rm', Object.keys(STALE).map((n) => `${dir}/${n}`));
  });
  t.equal((await shStatus('e2fsck', ['-fn', img])).exitCode, 0, 'the original image is consistent');
  const usage = await probeImage(img);
  if (!usage) throw new Error('not recognised');
  const counts = await superCounts(img);
  const before = (counts.blockCount - counts.freeBlocks) * counts.blockSize; // every table whole
  const after = totalLength(usage.used);
  const unused = (await unusedInodeTableBlocks(img)) * counts.blockSize;
  t.ok(unused > 0, `${unused} bytes of never-used inode tables`);
  t.equal(after, before - unused, 'map = in-use blocks minus the never-used inode-table blocks');
  t.comment(`map ${after} bytes instead of ${before} (${(100 * (1 - after / before)).toFixed(1)}% smaller)`);

  const copy = s.path('zeroed.img');
  await zeroedCopy(img, copy, usage.used);
  const check = await shStatus('e2fsck', ['-fn', copy]);
  t.equal(check.exitCode, 0, 'e2fsck -fn finds nothing wrong in the zeroed copy');
  if (check.exitCode !== 0) t.comment(check.output);
  const orig = await s.withMount(img, 'ro,noload', (dir) => treeDigest(dir));
  const restored = await s.withMount(copy, 'ro,noload', (dir) => treeDigest(dir));
  t.ok(Object.keys(orig).length > 300, 'files are there');
  t.same(restored, orig, 'the zeroed copy holds the same files');
  // The restored filesystem keeps working: new inodes past the old mark come from zeroed tables.
  await s.withMount(copy, 'noinit_itable', async (dir) => {
    const more: Record<string, number> = {};
    for (let i = 0; i < 2000; i++) more[`new/n${i}`] = 10;
    await writeRandomFiles(dir, more);
  });
  const again = await shStatus('e2fsck', ['-fn', copy]);
  t.equal(again.exitCode, 0, 'e2fsck -fn after creating 2000 more files in the copy');
  if (again.exitCode !== 0) t.comment(again.output);
});
