// ext2/ext3/ext4 used-block map, read from the block bitmaps.
//
// On-disk facts this relies on (all little-endian):
// - the superblock sits at byte 1024 whatever the block size; block groups start at
//   s_first_data_block (1 with 1 KiB blocks, else 0) and span s_blocks_per_group blocks;
// - the group descriptor table follows the superblock (or, with meta_bg, is split into one
//   block per "meta group" of descriptors-per-block groups, stored in that meta group's first,
//   second and last group);
// - a group descriptor names its block bitmap, inode bitmap and inode table anywhere in the fs
//   (flex_bg packs them together);
// - with bigalloc a bitmap bit stands for a cluster, not a block;
// - a group flagged BLOCK_UNINIT (when group checksums are on) has a bitmap that was never
//   written: the kernel synthesises it from the fixed metadata, and so do we.
import { FilesystemError } from '../../errors.js';
import { readBytes, type ByteReader } from '../../source/byte-reader.js';
import { bitmapToExtents, normalize, totalLength, type Extent } from '../extents.js';
import type { FsProbe, FsUsage } from './types.js';

const SUPERBLOCK_OFFSET = 1024;
const EXT_MAGIC = 0xef53;

const COMPAT_HAS_JOURNAL = 0x4;
const COMPAT_SPARSE_SUPER2 = 0x200;
const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_RECOVER = 0x4;
const INCOMPAT_JOURNAL_DEV = 0x8;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_MMP = 0x100;
const RO_COMPAT_SPARSE_SUPER = 0x1;
const RO_COMPAT_LARGE_FILE = 0x2;
const RO_COMPAT_BTREE_DIR = 0x4;
const RO_COMPAT_GDT_CSUM = 0x10;
const RO_COMPAT_BIGALLOC = 0x200;
const RO_COMPAT_METADATA_CSUM = 0x400;

const STATE_VALID = 0x1;
const STATE_ERROR = 0x2;
const BG_BLOCK_UNINIT = 0x2;

/** Largest single read, so multi-TB filesystems do not allocate huge buffers. */
const MAX_READ = 8 << 20;

interface ExtSuper {
  blockSize: number;
  clusterRatio: number;
  blocksCount: number;
  firstDataBlock: number;
  blocksPerGroup: number;
  clustersPerGroup: number;
  inodesPerGroup: number;
  inodeSize: number;
  state: number;
  compat: number;
  incompat: number;
  roCompat: number;
  reservedGdtBlocks: number;
  descSize: number;
  firstMetaBg: number;
  backupBgs: [number, number];
  journalInum: number;
  journalBackupType: number;
  journalBlocks: Buffer;
  mmpBlock: number;
  uuid: string;
  label: string;
}

interface Geometry {
  sb: ExtSuper;
  groupCount: number;
  descPerBlock: number;
  descBlocks: number;
  inodeTableBlocks: number;
}

interface GroupDesc {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  flags: number;
}

export const extProbe: FsProbe = {
  name: 'ext',
  async probe(r: ByteReader): Promise<FsUsage | null> {
    if (r.size < SUPERBLOCK_OFFSET + 1024) return null;
    const raw = await readBytes(r, SUPERBLOCK_OFFSET, 1024);
    if (raw.readUInt16LE(0x38) !== EXT_MAGIC) return null;
    const sb = parseSuper(raw);
    const fs = fsName(sb);
    const base = { fs, blockSize: sb.blockSize * sb.clusterRatio, uuid: sb.uuid, ...(sb.label ? { label: sb.label } : {}) };
    const fsBytes = sb.blocksCount * sb.blockSize;
    if (fsBytes > r.size) {
      throw new FilesystemError(`${fs}: superblock claims ${fsBytes} bytes (${sb.blocksCount} blocks of ${sb.blockSize}) but the partition holds ${r.size}`);
    }
    const whole = (why: string): FsUsage => ({
      ...base,
      used: [{ offset: 0, length: fsBytes }],
      method: `${fs} whole filesystem (${why})`,
      warnings: [`${fs}: ${why}; mapping the whole filesystem`],
    });
    if (sb.incompat & INCOMPAT_JOURNAL_DEV) return whole('external journal device');
    if (sb.incompat & INCOMPAT_RECOVER) return whole('journal needs recovery (mounted or not cleanly unmounted), bitmaps may be stale');
    if (!(sb.state & STATE_VALID) || sb.state & STATE_ERROR) {
      return whole('filesystem not marked clean, bitmaps may be stale');
    }

    checkGroupLayout(sb);
    const geo = geometry(sb);
    const descs = await readDescriptors(r, geo);
    const warnings: string[] = [];
    const fixed = fixedMetadata(geo, descs);
    const fromBitmaps = await bitmapExtents(r, geo, descs);
    const mapped = normalize([...fixed, ...fromBitmaps]);
    const journal = await journalExtents(r, geo, warnings);
    let used = mapped;
    if (journal.length) {
      used = normalize([...mapped, ...journal]);
      if (totalLength(used) !== totalLength(mapped)) warnings.push(`${fs}: journal blocks missing from the block bitmaps were added`);
    }
    used = roundToClusters(used, sb.blockSize * sb.clusterRatio, fsBytes);
    return { ...base, used, method: `${fs} block bitmaps`, ...(warnings.length ? { warnings } : {}) };
  },
};

function parseSuper(b: Buffer): ExtSuper {
  const logBlock = b.readUInt32LE(0x18);
  if (logBlock > 6) throw new FilesystemError(`ext superblock: absurd block size 2^${10 + logBlock} (log_block_size ${logBlock})`);
  const blockSize = 1024 << logBlock;
  const incompat = b.readUInt32LE(0x60);
  const roCompat = b.readUInt32LE(0x64);
  const is64 = (incompat & INCOMPAT_64BIT) !== 0;
  let clusterRatio = 1;
  if (roCompat & RO_COMPAT_BIGALLOC) {
    const logCluster = b.readUInt32LE(0x1c);
    if (logCluster < logBlock || logCluster - logBlock > 16) {
      throw new FilesystemError(`ext superblock: absurd cluster size (log_cluster_size ${logCluster}, log_block_size ${logBlock})`);
    }
    clusterRatio = 2 ** (logCluster - logBlock);
  }
  const hi = (lo: number, hiOff: number): number => lo + (is64 ? b.readUInt32LE(hiOff) * 2 ** 32 : 0);
  const blocksCount = hi(b.readUInt32LE(0x04), 0x150);
  const firstDataBlock = b.readUInt32LE(0x14);
  const blocksPerGroup = b.readUInt32LE(0x20);
  const clustersPerGroup = clusterRatio > 1 ? b.readUInt32LE(0x24) : blocksPerGroup;
  const inodesPerGroup = b.readUInt32LE(0x28);
  const revLevel = b.readUInt32LE(0x4c);
  const inodeSize = revLevel === 0 ? 128 : b.readUInt16LE(0x58);
  let descSize = 32;
  if (is64) {
    descSize = b.readUInt16LE(0xfe);
    if (descSize < 64 || descSize > 1024 || (descSize & (descSize - 1)) !== 0) {
      throw new FilesystemError(`ext superblock: bad group descriptor size ${descSize} for a 64bit filesystem`);
    }
  }
  if (blocksCount <= firstDataBlock) throw new FilesystemError(`ext superblock: block count ${blocksCount} is not above the first data block ${firstDataBlock}`);
  if (firstDataBlock > 1 || (firstDataBlock === 1 && blockSize !== 1024)) {
    throw new FilesystemError(`ext superblock: first data block ${firstDataBlock} impossible with ${blockSize}-byte blocks`);
  }
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) {
    throw new FilesystemError(`ext superblock: bad inode size ${inodeSize}`);
  }
  const reservedGdtBlocks = b.readUInt16LE(0xce);
  if (reservedGdtBlocks > blockSize / 4) {
    throw new FilesystemError(`ext superblock: ${reservedGdtBlocks} reserved GDT blocks is more than a resize inode can map`);
  }
  return {
    blockSize,
    clusterRatio,
    blocksCount,
    firstDataBlock,
    blocksPerGroup,
    clustersPerGroup,
    inodesPerGroup,
    inodeSize,
    state: b.readUInt16LE(0x3a),
    compat: b.readUInt32LE(0x5c),
    incompat,
    roCompat,
    reservedGdtBlocks,
    descSize,
    firstMetaBg: b.readUInt32LE(0x104),
    backupBgs: [b.readUInt32LE(0x24c), b.readUInt32LE(0x250)],
    journalInum: b.readUInt32LE(0xe0),
    journalBackupType: b.readUInt8(0xfd),
    journalBlocks: Buffer.from(b.subarray(0x10c, 0x10c + 17 * 4)),
    mmpBlock: incompat & INCOMPAT_MMP ? Number(b.readBigUInt64LE(0x168)) : 0,
    uuid: formatUuid(b.subarray(0x68, 0x78)),
    label: cString(b.subarray(0x78, 0x88)),
  };
}

/** Group-layout sanity, skipped for external journal devices (they have no groups). */
function checkGroupLayout(sb: ExtSuper): void {
  const bitsPerBitmap = sb.blockSize * 8;
  if (sb.clustersPerGroup === 0 || sb.clustersPerGroup > bitsPerBitmap) {
    throw new FilesystemError(`ext superblock: ${sb.clustersPerGroup} clusters per group does not fit a ${sb.blockSize}-byte bitmap`);
  }
  if (sb.blocksPerGroup !== sb.clustersPerGroup * sb.clusterRatio) {
    throw new FilesystemError(`ext superblock: blocks per group ${sb.blocksPerGroup} disagrees with ${sb.clustersPerGroup} clusters of ${sb.clusterRatio} blocks`);
  }
  if (sb.inodesPerGroup === 0 || sb.inodesPerGroup > bitsPerBitmap) {
    throw new FilesystemError(`ext superblock: ${sb.inodesPerGroup} inodes per group does not fit a ${sb.blockSize}-byte bitmap`);
  }
}

/** The name blkid would give: ext4 once any feature ext3 lacks is on, else ext3 with a journal. */
function fsName(sb: ExtSuper): string {
  if (sb.incompat & INCOMPAT_JOURNAL_DEV) return 'jbd';
  const ext3Incompat = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG;
  const ext3RoCompat = RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_BTREE_DIR;
  if (sb.incompat & ~ext3Incompat || sb.roCompat & ~ext3RoCompat) return 'ext4';
  return sb.compat & COMPAT_HAS_JOURNAL ? 'ext3' : 'ext2';
}

function geometry(sb: ExtSuper): Geometry {
  const groupCount = Math.ceil((sb.blocksCount - sb.firstDataBlock) / sb.blocksPerGroup);
  const descPerBlock = sb.blockSize / sb.descSize;
  const descBlocks = Math.ceil(groupCount / descPerBlock);
  if (sb.incompat & INCOMPAT_META_BG && sb.firstMetaBg > descBlocks) {
    throw new FilesystemError(`ext superblock: first meta block group ${sb.firstMetaBg} is beyond the ${descBlocks} descriptor blocks`);
  }
  const inodeTableBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / sb.blockSize);
  return { sb, groupCount, descPerBlock, descBlocks, inodeTableBlocks };
}

function groupFirstBlock(geo: Geometry, g: number): number {
  return geo.sb.firstDataBlock + g * geo.sb.blocksPerGroup;
}

function groupEndBlock(geo: Geometry, g: number): number {
  return Math.min(groupFirstBlock(geo, g + 1), geo.sb.blocksCount);
}

function isPowerOf(n: number, base: number): boolean {
  let x = base;
  while (x < n) x *= base;
  return x === n;
}

/** Whether group g holds a superblock backup (and the old-style descriptor table copy). */
function hasSuper(sb: ExtSuper, g: number): boolean {
  if (g === 0) return true;
  if (sb.compat & COMPAT_SPARSE_SUPER2) return g === sb.backupBgs[0] || g === sb.backupBgs[1];
  if (g <= 1 || !(sb.roCompat & RO_COMPAT_SPARSE_SUPER)) return true;
  if (g % 2 === 0) return false;
  return isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7);
}

/** Block holding the superblock copy of a group that has one. */
function superBlockOf(geo: Geometry, g: number): number {
  // The primary superblock is at byte 1024: block 1 with 1 KiB blocks even when the first data
  // block is 0 (bigalloc), block 0 otherwise.
  if (g === 0) return geo.sb.blockSize === 1024 ? 1 : 0;
  return groupFirstBlock(geo, g);
}

/** Descriptor blocks laid out contiguously after the superblock (all of them without meta_bg). */
function oldStyleDescBlocks(geo: Geometry): number {
  return geo.sb.incompat & INCOMPAT_META_BG ? geo.sb.firstMetaBg : geo.descBlocks;
}

/** Where descriptor block i lives in the primary copy. */
function descBlockLocation(geo: Geometry, i: number): number {
  if (i < oldStyleDescBlocks(geo)) return superBlockOf(geo, 0) + 1 + i;
  const g = i * geo.descPerBlock;
  return metaBgDescBlock(geo, g);
}

/** The descriptor block a meta_bg group (first, second or last of its meta group) carries. */
function metaBgDescBlock(geo: Geometry, g: number): number {
  if (g === 0) return superBlockOf(geo, 0) + 1;
  return groupFirstBlock(geo, g) + (hasSuper(geo.sb, g) ? 1 : 0);
}

async function readDescriptors(r: ByteReader, geo: Geometry): Promise<GroupDesc[]> {
  const { sb } = geo;
  const bs = sb.blockSize;
  // Group consecutive descriptor blocks into runs so the table is read in a few large reads.
  const runs: { block: number; first: number; count: number }[] = [];
  for (let i = 0; i < geo.descBlocks; i++) {
    const block = descBlockLocation(geo, i);
    if (block >= sb.blocksCount) {
      throw new FilesystemError(`ext group descriptor block ${i} at block ${block} lies outside the filesystem (${sb.blocksCount} blocks)`);
    }
    const last = runs[runs.length - 1];
    if (last && last.block + last.count === block && (last.count + 1) * bs <= MAX_READ) last.count++;
    else runs.push({ block, first: i, count: 1 });
  }
  const descs: GroupDesc[] = [];
  for (const run of runs) {
    const buf = await readBytes(r, run.block * bs, run.count * bs);
    for (let k = 0; k < run.count * geo.descPerBlock; k++) {
      const g = run.first * geo.descPerBlock + k;
      if (g >= geo.groupCount) break;
      descs[g] = parseDesc(buf.subarray(k * sb.descSize, (k + 1) * sb.descSize), sb.descSize);
    }
  }
  for (let g = 0; g < geo.groupCount; g++) checkDesc(geo, g, descs[g]!);
  return descs;
}

function parseDesc(b: Buffer, descSize: number): GroupDesc {
  const wide = descSize >= 64;
  const u64 = (lo: number, hi: number): number => b.readUInt32LE(lo) + (wide ? b.readUInt32LE(hi) * 2 ** 32 : 0);
  return {
    blockBitmap: u64(0x00, 0x20),
    inodeBitmap: u64(0x04, 0x24),
    inodeTable: u64(0x08, 0x28),
    flags: b.readUInt16LE(0x12),
  };
}

function checkDesc(geo: Geometry, g: number, d: GroupDesc): void {
  const { firstDataBlock, blocksCount } = geo.sb;
  const inside = (start: number, count: number): boolean => start >= firstDataBlock && start + count <= blocksCount;
  const fail = (what: string, at: number): never => {
    throw new FilesystemError(`ext group ${g}: ${what} at block ${at} lies outside the filesystem (blocks ${firstDataBlock}..${blocksCount - 1})`);
  };
  if (!inside(d.blockBitmap, 1)) fail('block bitmap', d.blockBitmap);
  if (!inside(d.inodeBitmap, 1)) fail('inode bitmap', d.inodeBitmap);
  if (!inside(d.inodeTable, geo.inodeTableBlocks)) fail('inode table', d.inodeTable);
}

/**
 * Everything the layout alone says is in use: boot block and superblock, superblock backups,
 * descriptor tables and their reserved growth room, every group's bitmaps and inode table, the
 * MMP block. These are in the bitmaps of initialised groups anyway; for BLOCK_UNINIT groups
 * they are exactly what the kernel would mark (it marks its own group's bitmaps and table; we
 * add any group's that fall inside, which flex_bg makes common).
 */
function fixedMetadata(geo: Geometry, descs: GroupDesc[]): Extent[] {
  const { sb } = geo;
  const bs = sb.blockSize;
  const out: Extent[] = [];
  const blocks = (start: number, count: number): void => {
    out.push({ offset: start * bs, length: count * bs });
  };
  // Boot block, primary superblock and anything before the first group.
  out.push({ offset: 0, length: Math.max(2048, sb.firstDataBlock * bs) });
  const oldDesc = oldStyleDescBlocks(geo) + sb.reservedGdtBlocks;
  const metaBg = (sb.incompat & INCOMPAT_META_BG) !== 0;
  for (let g = 0; g < geo.groupCount; g++) {
    if (hasSuper(sb, g)) {
      const sbBlock = superBlockOf(geo, g);
      blocks(sbBlock, Math.min(1 + oldDesc, sb.blocksCount - sbBlock));
    }
    if (metaBg) {
      const metaGroup = Math.floor(g / geo.descPerBlock);
      const pos = g % geo.descPerBlock;
      if (metaGroup >= sb.firstMetaBg && (pos === 0 || pos === 1 || pos === geo.descPerBlock - 1)) {
        blocks(metaBgDescBlock(geo, g), 1);
      }
    }
    const d = descs[g]!;
    blocks(d.blockBitmap, 1);
    blocks(d.inodeBitmap, 1);
    blocks(d.inodeTable, geo.inodeTableBlocks);
  }
  if (sb.mmpBlock > 0 && sb.mmpBlock < sb.blocksCount) blocks(sb.mmpBlock, 1);
  return out;
}

function groupChecksums(sb: ExtSuper): boolean {
  return (sb.roCompat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM)) !== 0;
}

/** Used clusters of every initialised group, read from the on-disk bitmaps. */
async function bitmapExtents(r: ByteReader, geo: Geometry, descs: GroupDesc[]): Promise<Extent[]> {
  const { sb } = geo;
  const bs = sb.blockSize;
  const clusterBytes = bs * sb.clusterRatio;
  // Without group checksums the kernel ignores the UNINIT flags and reads the bitmap.
  const honourUninit = groupChecksums(sb);
  const wanted: { g: number; block: number }[] = [];
  for (let g = 0; g < geo.groupCount; g++) {
    const d = descs[g]!;
    if (honourUninit && d.flags & BG_BLOCK_UNINIT) continue;
    wanted.push({ g, block: d.blockBitmap });
  }
  wanted.sort((a, b) => a.block - b.block);
  const out: Extent[] = [];
  let i = 0;
  while (i < wanted.length) {
    // flex_bg stores the bitmaps of a flex group back to back: read such runs at once.
    let j = i + 1;
    while (j < wanted.length && wanted[j]!.block === wanted[j - 1]!.block + 1 && (j - i + 1) * bs <= MAX_READ) j++;
    const first = wanted[i]!.block;
    const buf = await readBytes(r, first * bs, (wanted[j - 1]!.block - first + 1) * bs);
    for (let k = i; k < j; k++) {
      const { g, block } = wanted[k]!;
      const start = groupFirstBlock(geo, g);
      const units = Math.ceil((groupEndBlock(geo, g) - start) / sb.clusterRatio);
      const bitmap = buf.subarray((block - first) * bs, (block - first + 1) * bs);
      for (const e of bitmapToExtents(bitmap, units, clusterBytes, start * bs)) out.push(e);
    }
    i = j;
  }
  return out;
}

/**
 * The journal's blocks, from the copy of the journal inode's block map the superblock keeps.
 * They are in the bitmaps of any consistent filesystem; this is a second, independent source.
 */
async function journalExtents(r: ByteReader, geo: Geometry, warnings: string[]): Promise<Extent[]> {
  const { sb } = geo;
  // jnl_backup_type 1 (EXT3_JNL_BACKUP_BLOCKS): s_jnl_blocks holds i_block[15] then the size.
  if (!(sb.compat & COMPAT_HAS_JOURNAL) || sb.journalInum === 0 || sb.journalBackupType !== 1) return [];
  const iBlock = sb.journalBlocks.subarray(0, 60);
  const out: Extent[] = [];
  const walker = new BlockMapWalker(r, geo, out);
  try {
    if (iBlock.readUInt16LE(0) === 0xf30a) await walker.extentNode(iBlock, 0);
    else await walker.indirect(iBlock);
  } catch (err) {
    if (!(err instanceof JournalMapError)) throw err;
    warnings.push(`ext journal backup map ignored: ${err.message}`);
    return [];
  }
  return out;
}

class JournalMapError extends Error {}

/** Walks an inode block map (extent tree or classic indirect blocks) into byte extents. */
class BlockMapWalker {
  private reads = 0;
  constructor(
    private readonly r: ByteReader,
    private readonly geo: Geometry,
    private readonly out: Extent[],
  ) {}

  private add(start: number, count: number): void {
    const { blocksCount, blockSize } = this.geo.sb;
    if (count <= 0) return;
    if (start + count > blocksCount) throw new JournalMapError(`block ${start}+${count} outside the filesystem`);
    this.out.push({ offset: start * blockSize, length: count * blockSize });
  }

  private async block(n: number): Promise<Buffer> {
    // A journal map is a few blocks; a runaway walk means the copy is garbage.
    if (++this.reads > 1 << 16) throw new JournalMapError('map too large');
    this.add(n, 1);
    return readBytes(this.r, n * this.geo.sb.blockSize, this.geo.sb.blockSize);
  }

  async extentNode(node: Buffer, level: number): Promise<void> {
    if (node.readUInt16LE(0) !== 0xf30a) throw new JournalMapError('bad extent header');
    const entries = node.readUInt16LE(2);
    const depth = node.readUInt16LE(6);
    if (depth > 5 || level > 5 || 12 + entries * 12 > node.length) throw new JournalMapError('bad extent node');
    for (let i = 0; i < entries; i++) {
      const e = node.subarray(12 + i * 12, 24 + i * 12);
      if (depth === 0) {
        const rawLen = e.readUInt16LE(4);
        const len = rawLen > 32768 ? rawLen - 32768 : rawLen;
        this.add(e.readUInt16LE(6) * 2 ** 32 + e.readUInt32LE(8), len);
      } else {
        const child = e.readUInt32LE(4) + e.readUInt16LE(8) * 2 ** 32;
        await this.extentNode(await this.block(child), level + 1);
      }
    }
  }

  async indirect(iBlock: Buffer): Promise<void> {
    for (let i = 0; i < 12; i++) {
      const b = iBlock.readUInt32LE(i * 4);
      if (b) this.add(b, 1);
    }
    for (let depth = 1; depth <= 3; depth++) {
      const b = iBlock.readUInt32LE((11 + depth) * 4);
      if (b) await this.indirectBlock(b, depth);
    }
  }

  private async indirectBlock(n: number, depth: number): Promise<void> {
    const buf = await this.block(n);
    for (let off = 0; off < buf.length; off += 4) {
      const b = buf.readUInt32LE(off);
      if (!b) continue;
      if (depth === 1) this.add(b, 1);
      else await this.indirectBlock(b, depth - 1);
    }
  }
}

/** With bigalloc the allocation unit is the cluster: widen every extent to whole clusters. */
function roundToClusters(used: Extent[], clusterBytes: number, fsBytes: number): Extent[] {
  return normalize(
    used.map((e) => {
      const start = Math.floor(e.offset / clusterBytes) * clusterBytes;
      const end = Math.min(Math.ceil((e.offset + e.length) / clusterBytes) * clusterBytes, fsBytes);
      return { offset: start, length: end - start };
    }),
  );
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('utf8').trim();
}

function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
