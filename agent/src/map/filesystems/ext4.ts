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
//
// Trust rule (issue 11): an image that silently misses used data is the worst failure there is,
// so the allocation map is only used once the metadata it rests on has been verified; any check
// that fails throws FilesystemError and build-map.ts copies the whole partition instead.
// - Always: the superblock and descriptor fields are in range, bitmaps and inode tables do not
//   overlap, every initialised group's bitmap free count equals its descriptor's
//   bg_free_blocks_count, and the descriptors' counts add up to the superblock's
//   s_free_blocks_count (the kernel writes that sum on every clean unmount, mke2fs and e2fsck
//   keep it exact).
// - metadata_csum: the superblock, descriptor and block bitmap crc32c checksums must match, so a
//   damaged bitmap is caught by its checksum.
// - Without metadata_csum nothing protects a bitmap's bits (a change that keeps its free count
//   passes the checks above), so the bitmaps are cross-checked against the inodes: every block
//   an in-use inode references (data, extent-tree and indirect blocks, xattr block) must be
//   marked used, as e2fsck pass 1 would require. That costs reading the in-use inodes and their
//   index blocks, a small fraction of the used data. gdt_csum (uninit_bg) descriptors must also
//   match their crc16.
// - With group checksums (gdt_csum or metadata_csum, verified), inodes past
//   inodes_per_group - bg_itable_unused were never used: their inode-table blocks are left out
//   (see unusedInodeBlocks), so a huge, mostly empty disk maps in proportion to what it holds.
import { FilesystemError } from '../../errors.js';
import { crc32cUpdate } from '../crc32c.js';
import { readBytes, type ByteReader } from '../../source/byte-reader.js';
import { bitmapToExtents, normalize, subtract, totalLength, type Extent } from '../extents.js';
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
const INCOMPAT_CSUM_SEED = 0x2000;

const STATE_VALID = 0x1;
const STATE_ERROR = 0x2;
const BG_INODE_UNINIT = 0x1;
const BG_BLOCK_UNINIT = 0x2;
/** Offset of bg_checksum in a group descriptor. */
const DESC_CSUM_OFFSET = 0x1e;

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
  freeBlocksCount: number;
  firstIno: number;
  /** crc32c seed of every metadata_csum checksum but the superblock's. */
  csumSeed: number;
  uuidBytes: Buffer;
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
  freeClusters: number;
  itableUnused: number;
  /** bg_block_bitmap_csum: lo 16 bits, plus the hi 16 bits in 64-byte descriptors. */
  blockBitmapCsum: number;
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
    // A backup superblock 1024 bytes in means the partition starts at a block group, not at
    // the filesystem (a damaged partition start): the map would land at the wrong place.
    const groupNr = raw.readUInt16LE(0x5a);
    if (groupNr !== 0) throw new FilesystemError(`${fs}: the superblock at byte 1024 is the backup of group ${groupNr}, not the primary`);
    if (fsBytes > r.size) {
      throw new FilesystemError(`${fs}: superblock claims ${fsBytes} bytes (${sb.blocksCount} blocks of ${sb.blockSize}) but the partition holds ${r.size}`);
    }
    if (sb.roCompat & RO_COMPAT_METADATA_CSUM) checkSuperChecksum(raw);
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
    checkFreeTotal(geo, descs);
    const warnings: string[] = [];
    const fixed = fixedMetadata(geo, descs);
    const fromBitmaps = await bitmapExtents(r, geo, descs);
    const mapped = subtract(normalize([...fixed, ...fromBitmaps]), unusedInodeBlocks(geo, descs));
    if (!(sb.roCompat & RO_COMPAT_METADATA_CSUM)) await crossCheckInodes(r, geo, descs, mapped);
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
  const uuidBytes = Buffer.from(b.subarray(0x68, 0x78));
  let csumSeed = 0;
  if (roCompat & RO_COMPAT_METADATA_CSUM) {
    if (b.readUInt8(0x175) !== 1) throw new FilesystemError(`ext superblock: unknown metadata checksum type ${b.readUInt8(0x175)}`);
    csumSeed = incompat & INCOMPAT_CSUM_SEED ? b.readUInt32LE(0x270) : crc32cUpdate(0xffffffff, uuidBytes);
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
    freeBlocksCount: hi(b.readUInt32LE(0x0c), 0x158),
    firstIno: revLevel === 0 ? 11 : b.readUInt32LE(0x54),
    csumSeed,
    uuidBytes,
    uuid: formatUuid(uuidBytes),
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
  const raws: Buffer[] = [];
  for (const run of runs) {
    const buf = await readBytes(r, run.block * bs, run.count * bs);
    for (let k = 0; k < run.count * geo.descPerBlock; k++) {
      const g = run.first * geo.descPerBlock + k;
      if (g >= geo.groupCount) break;
      const raw = buf.subarray(k * sb.descSize, (k + 1) * sb.descSize);
      raws[g] = raw;
      descs[g] = parseDesc(raw, sb.descSize);
    }
  }
  for (let g = 0; g < geo.groupCount; g++) checkDesc(geo, g, descs[g]!);
  checkNoOverlap(geo, descs);
  for (let g = 0; g < geo.groupCount; g++) checkDescChecksum(sb, g, raws[g]!);
  return descs;
}

function parseDesc(b: Buffer, descSize: number): GroupDesc {
  const wide = descSize >= 64;
  const u64 = (lo: number, hi: number): number => b.readUInt32LE(lo) + (wide ? b.readUInt32LE(hi) * 2 ** 32 : 0);
  const u32 = (lo: number, hi: number): number => b.readUInt16LE(lo) + (wide ? b.readUInt16LE(hi) * 2 ** 16 : 0);
  return {
    blockBitmap: u64(0x00, 0x20),
    inodeBitmap: u64(0x04, 0x24),
    inodeTable: u64(0x08, 0x28),
    flags: b.readUInt16LE(0x12),
    freeClusters: u32(0x0c, 0x2c),
    itableUnused: u32(0x1c, 0x32),
    blockBitmapCsum: u32(0x18, 0x38),
  };
}

/** metadata_csum: s_checksum is crc32c (seed ~0, no final inversion) of the bytes before it. */
function checkSuperChecksum(raw: Buffer): void {
  const want = raw.readUInt32LE(0x3fc);
  const got = crc32cUpdate(0xffffffff, raw.subarray(0, 0x3fc));
  if (want !== got) throw new FilesystemError(`ext superblock: checksum mismatch (stored 0x${hex(want)}, computed 0x${hex(got)})`);
}

/**
 * bg_checksum, the low 16 bits of a checksum over the le32 group number, then the descriptor
 * with the checksum field itself left out (metadata_csum: crc32c from the fs seed, the field
 * counted as two zero bytes; gdt_csum: crc16 from ~0 over the uuid first).
 */
function checkDescChecksum(sb: ExtSuper, g: number, raw: Buffer): void {
  const group = Buffer.alloc(4);
  group.writeUInt32LE(g);
  const head = raw.subarray(0, DESC_CSUM_OFFSET);
  const tail = raw.subarray(DESC_CSUM_OFFSET + 2);
  let got: number;
  if (sb.roCompat & RO_COMPAT_METADATA_CSUM) {
    let c = crc32cUpdate(sb.csumSeed, group);
    c = crc32cUpdate(c, head);
    c = crc32cUpdate(c, Buffer.alloc(2));
    c = crc32cUpdate(c, tail);
    got = c & 0xffff;
  } else if (sb.roCompat & RO_COMPAT_GDT_CSUM) {
    let c = crc16(0xffff, sb.uuidBytes);
    c = crc16(c, group);
    c = crc16(c, head);
    if (sb.incompat & INCOMPAT_64BIT) c = crc16(c, tail);
    got = c;
  } else {
    return;
  }
  const want = raw.readUInt16LE(DESC_CSUM_OFFSET);
  if (want !== got) throw new FilesystemError(`ext group ${g}: descriptor checksum mismatch (stored 0x${hex(want)}, computed 0x${hex(got)})`);
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
  const units = groupClusters(geo, g);
  if (d.freeClusters > units) {
    throw new FilesystemError(`ext group ${g}: ${d.freeClusters} free clusters in a group of ${units}`);
  }
  if (d.itableUnused > geo.sb.inodesPerGroup) {
    throw new FilesystemError(`ext group ${g}: ${d.itableUnused} unused inodes in a group of ${geo.sb.inodesPerGroup}`);
  }
  // The reserved inodes (root among them) are always in use: the kernel refuses this too.
  if (g === 0 && groupChecksums(geo.sb) && usedInodes(geo.sb, d) < Math.min(geo.sb.firstIno - 1, geo.sb.inodesPerGroup)) {
    throw new FilesystemError(`ext group 0: only ${usedInodes(geo.sb, d)} inodes may be in use, fewer than the ${geo.sb.firstIno - 1} reserved ones`);
  }
}

/** No two groups' bitmaps or inode tables share a block. */
function checkNoOverlap(geo: Geometry, descs: GroupDesc[]): void {
  const ranges: { start: number; end: number; what: string }[] = [];
  descs.forEach((d, g) => {
    ranges.push({ start: d.blockBitmap, end: d.blockBitmap + 1, what: `group ${g} block bitmap` });
    ranges.push({ start: d.inodeBitmap, end: d.inodeBitmap + 1, what: `group ${g} inode bitmap` });
    ranges.push({ start: d.inodeTable, end: d.inodeTable + geo.inodeTableBlocks, what: `group ${g} inode table` });
  });
  ranges.sort((a, b) => a.start - b.start);
  for (let i = 1; i < ranges.length; i++) {
    const a = ranges[i - 1]!;
    const b = ranges[i]!;
    if (b.start < a.end) throw new FilesystemError(`ext: ${a.what} and ${b.what} overlap at block ${b.start}`);
  }
}

/** Clusters in group g (the last group may be shorter). */
function groupClusters(geo: Geometry, g: number): number {
  return Math.ceil((groupEndBlock(geo, g) - groupFirstBlock(geo, g)) / geo.sb.clusterRatio);
}

/** The descriptors' free counts add up to the superblock's (which counts blocks, not clusters). */
function checkFreeTotal(geo: Geometry, descs: GroupDesc[]): void {
  let free = 0;
  for (const d of descs) free += d.freeClusters;
  const freeBlocks = free * geo.sb.clusterRatio;
  if (freeBlocks !== geo.sb.freeBlocksCount) {
    throw new FilesystemError(`ext: group descriptors count ${freeBlocks} free blocks, the superblock ${geo.sb.freeBlocksCount}`);
  }
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

/**
 * Used clusters of every initialised group, read from the on-disk bitmaps, each bitmap checked
 * first: its metadata_csum checksum (crc32c from the fs seed over clusters_per_group / 8 bytes,
 * low 16 bits in 32-byte descriptors) and its free count against the descriptor's. The bits past
 * the end of a short last group are padding (mke2fs sets them) and are not counted.
 */
async function bitmapExtents(r: ByteReader, geo: Geometry, descs: GroupDesc[]): Promise<Extent[]> {
  const { sb } = geo;
  const bs = sb.blockSize;
  const clusterBytes = bs * sb.clusterRatio;
  const csum = (sb.roCompat & RO_COMPAT_METADATA_CSUM) !== 0;
  const csumBytes = Math.floor(sb.clustersPerGroup / 8);
  const csumMask = sb.descSize >= 64 ? 0xffffffff : 0xffff;
  const wanted = await readGroupBlocks(r, geo, descs, (d) => d.blockBitmap, (d) => !(groupChecksums(sb) && d.flags & BG_BLOCK_UNINIT));
  const out: Extent[] = [];
  for (const { g, data: bitmap } of wanted) {
    const d = descs[g]!;
    if (csum) {
      const got = (crc32cUpdate(sb.csumSeed, bitmap.subarray(0, csumBytes)) & csumMask) >>> 0;
      if (got !== d.blockBitmapCsum) {
        throw new FilesystemError(`ext group ${g}: block bitmap checksum mismatch (stored 0x${hex(d.blockBitmapCsum)}, computed 0x${hex(got)})`);
      }
    }
    const units = groupClusters(geo, g);
    const free = units - countSet(bitmap, units);
    if (free !== d.freeClusters) {
      throw new FilesystemError(`ext group ${g}: block bitmap has ${free} free clusters, the descriptor says ${d.freeClusters}`);
    }
    const start = groupFirstBlock(geo, g);
    for (const e of bitmapToExtents(bitmap, units, clusterBytes, start * bs)) out.push(e);
  }
  return out;
}

/**
 * One metadata block per selected group (a bitmap), read in runs: flex_bg stores the bitmaps of
 * a flex group back to back. Returned in block order.
 */
async function readGroupBlocks(
  r: ByteReader,
  geo: Geometry,
  descs: GroupDesc[],
  blockOf: (d: GroupDesc) => number,
  select: (d: GroupDesc, g: number) => boolean,
): Promise<{ g: number; data: Buffer }[]> {
  const bs = geo.sb.blockSize;
  const wanted: { g: number; block: number }[] = [];
  descs.forEach((d, g) => {
    if (select(d, g)) wanted.push({ g, block: blockOf(d) });
  });
  wanted.sort((a, b) => a.block - b.block);
  const out: { g: number; data: Buffer }[] = [];
  let i = 0;
  while (i < wanted.length) {
    let j = i + 1;
    while (j < wanted.length && wanted[j]!.block === wanted[j - 1]!.block + 1 && (j - i + 1) * bs <= MAX_READ) j++;
    const first = wanted[i]!.block;
    const buf = await readBytes(r, first * bs, (wanted[j - 1]!.block - first + 1) * bs);
    for (let k = i; k < j; k++) {
      const { g, block } = wanted[k]!;
      out.push({ g, data: buf.subarray((block - first) * bs, (block - first + 1) * bs) });
    }
    i = j;
  }
  return out;
}

const POPCOUNT = (() => {
  const t = new Uint8Array(256);
  for (let n = 1; n < 256; n++) t[n] = (n & 1) + t[n >> 1]!;
  return t;
})();

/** Set bits among the first UNITS bits of a little-endian bitmap. */
function countSet(bitmap: Uint8Array, units: number): number {
  let n = 0;
  const whole = units >> 3;
  for (let i = 0; i < whole; i++) n += POPCOUNT[bitmap[i]!]!;
  const rest = units & 7;
  if (rest) n += POPCOUNT[bitmap[whole]! & ((1 << rest) - 1)]!;
  return n;
}

/**
 * Inode-table blocks that hold only never-used inodes, when group checksums are on (and the
 * descriptors' checksums were verified): the inodes past inodes_per_group - bg_itable_unused of
 * a group, the whole table with INODE_UNINIT. Why leaving them out is safe: the kernel allocates
 * an inode past that mark only after moving bg_itable_unused back (same transaction); its lazy
 * itable init (ext4_init_inode_table) zeroes exactly these blocks, from the table start plus
 * DIV_ROUND_UP(used inodes, inodes per block) to the table's end, whenever it likes; e2fsck's
 * inode scan stops at the mark when group checksums are on; mke2fs -E lazy_itable_init never
 * writes them. The image reads zeros there, which is what a zeroed table holds. Only whole
 * blocks are left out (a block shared with a possibly used inode is kept), and only blocks of a
 * group's own table, which checkNoOverlap proved no other metadata shares; with flex_bg the
 * tables of many groups sit together and each is trimmed on its own.
 */
function unusedInodeBlocks(geo: Geometry, descs: GroupDesc[]): Extent[] {
  const { sb } = geo;
  if (!groupChecksums(sb)) return [];
  const bs = sb.blockSize;
  const out: Extent[] = [];
  for (const d of descs) {
    const used = usedInodes(sb, d);
    const usedBlocks = Math.ceil((used * sb.inodeSize) / bs);
    if (usedBlocks < geo.inodeTableBlocks) {
      out.push({ offset: (d.inodeTable + usedBlocks) * bs, length: (geo.inodeTableBlocks - usedBlocks) * bs });
    }
  }
  return normalize(out);
}

/** Inodes of a group that may have been used: all, or those before the never-used tail. */
function usedInodes(sb: ExtSuper, d: GroupDesc): number {
  if (!groupChecksums(sb)) return sb.inodesPerGroup;
  if (d.flags & BG_INODE_UNINIT) return 0;
  return sb.inodesPerGroup - d.itableUnused;
}

const S_IFMT = 0xf000;
const S_IFREG = 0x8000;
const S_IFDIR = 0x4000;
const S_IFLNK = 0xa000;
const EXT4_EXTENTS_FL = 0x80000;
const EXT4_INLINE_DATA_FL = 0x10000000;
const EXT2_RESIZE_INO = 7;
const EXTENT_MAGIC = 0xf30a;

/**
 * Without metadata_csum no checksum vouches for the block bitmaps: check them against the
 * inodes. Every block an in-use inode references must lie in MAPPED (the bitmaps' map with the
 * fixed metadata), else the bitmap lost a used block and FilesystemError is thrown. In-use
 * inodes are those the inode bitmaps mark (a damaged inode bitmap only makes us check fewer or
 * more inodes; the block bitmap it would hide is the one being verified, not trusted). The
 * walk's reads are bounded by the number of mapped blocks, so damaged trees cannot run away.
 */
async function crossCheckInodes(r: ByteReader, geo: Geometry, descs: GroupDesc[], mapped: readonly Extent[]): Promise<void> {
  const { sb } = geo;
  const bs = sb.blockSize;
  const lazy = groupChecksums(sb);
  const checker = new InodeChecker(r, geo, mapped);
  const bitmaps = await readGroupBlocks(r, geo, descs, (d) => d.inodeBitmap, (d) => usedInodes(sb, d) > 0);
  bitmaps.sort((a, b) => a.g - b.g);
  const perBlock = bs / sb.inodeSize;
  for (const { g, data } of bitmaps) {
    const d = descs[g]!;
    const limit = usedInodes(sb, d);
    if (lazy && countSet(data, sb.inodesPerGroup) !== countSet(data, limit)) {
      throw new FilesystemError(`ext group ${g}: inode bitmap marks inodes in the never-used part of the table (past ${limit})`);
    }
    // Runs of inode-table blocks holding at least one in-use inode.
    const blocks: number[] = [];
    for (let i = 0; i < limit; i++) {
      if ((i & 7) === 0 && data[i >> 3] === 0) {
        i += 7;
        continue;
      }
      if (!(data[i >> 3]! & (1 << (i & 7)))) continue;
      const blk = Math.floor(i / perBlock);
      if (blocks[blocks.length - 1] !== blk) blocks.push(blk);
    }
    let k = 0;
    while (k < blocks.length) {
      let m = k + 1;
      while (m < blocks.length && blocks[m] === blocks[m - 1]! + 1 && (m - k + 1) * bs <= MAX_READ) m++;
      const table = await readBytes(r, (d.inodeTable + blocks[k]!) * bs, (m - k) * bs);
      for (let i = blocks[k]! * perBlock; i < (blocks[m - 1]! + 1) * perBlock && i < limit; i++) {
        if (!(data[i >> 3]! & (1 << (i & 7)))) continue;
        const at = (i - blocks[k]! * perBlock) * sb.inodeSize;
        await checker.inode(g * sb.inodesPerGroup + i + 1, table.subarray(at, at + sb.inodeSize));
      }
      k = m;
    }
  }
}

/** Walks one inode's block references and checks each is in the map. */
class InodeChecker {
  private budget: number;
  private ino = 0;
  constructor(
    private readonly r: ByteReader,
    private readonly geo: Geometry,
    private readonly mapped: readonly Extent[],
  ) {
    this.budget = totalLength(mapped) / geo.sb.blockSize;
  }

  async inode(ino: number, b: Buffer): Promise<void> {
    this.ino = ino;
    const { sb } = this.geo;
    const mode = b.readUInt16LE(0x00);
    const size = b.readUInt32LE(0x04) + b.readUInt32LE(0x6c) * 2 ** 32;
    const flags = b.readUInt32LE(0x20);
    const acl = b.readUInt32LE(0x68) + (sb.incompat & INCOMPAT_64BIT ? b.readUInt16LE(0x76) * 2 ** 32 : 0);
    if (acl) this.need(acl, 1, 'extended attribute block');
    const iBlock = b.subarray(0x28, 0x28 + 60);
    if (ino === EXT2_RESIZE_INO) {
      // Its double-indirect block; what that maps is the reserved GDT area, fixed metadata.
      const dind = iBlock.readUInt32LE(13 * 4);
      if (dind) this.need(dind, 1, 'resize inode block');
      return;
    }
    const type = mode & S_IFMT;
    const mapsBlocks =
      type === S_IFREG || type === S_IFDIR || (type === S_IFLNK && size >= 60) || (mode === 0 && ino < sb.firstIno);
    if (!mapsBlocks || flags & EXT4_INLINE_DATA_FL) return;
    if (flags & EXT4_EXTENTS_FL) await this.extentNode(iBlock, 0);
    else await this.indirect(iBlock);
  }

  private fail(what: string): never {
    throw new FilesystemError(`ext inode ${this.ino}: ${what}`);
  }

  /** Blocks START..START+COUNT-1 must be inside the fs and mapped. */
  private need(start: number, count: number, what: string): void {
    const { blocksCount, blockSize } = this.geo.sb;
    if (start < this.geo.sb.firstDataBlock || start + count > blocksCount) this.fail(`${what} ${start}+${count} lies outside the filesystem`);
    const offset = start * blockSize;
    const end = offset + count * blockSize;
    const m = this.mapped;
    let lo = 0;
    let hi = m.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const e = m[mid]!;
      if (e.offset + e.length <= offset) lo = mid + 1;
      else if (e.offset > offset) hi = mid - 1;
      else if (e.offset + e.length >= end) return;
      else break;
    }
    this.fail(`${what} ${start}+${count} is in use but free in the block bitmap`);
  }

  private async block(n: number, what: string): Promise<Buffer> {
    this.need(n, 1, what);
    if (--this.budget < 0) this.fail('block maps reference more blocks than the filesystem uses');
    return readBytes(this.r, n * this.geo.sb.blockSize, this.geo.sb.blockSize);
  }

  private async extentNode(node: Buffer, level: number): Promise<void> {
    if (node.readUInt16LE(0) !== EXTENT_MAGIC) this.fail('bad extent header');
    const entries = node.readUInt16LE(2);
    const depth = node.readUInt16LE(6);
    if (depth > 5 || level > 5 || 12 + entries * 12 > node.length) this.fail('bad extent node');
    for (let i = 0; i < entries; i++) {
      const e = node.subarray(12 + i * 12, 24 + i * 12);
      if (depth === 0) {
        const rawLen = e.readUInt16LE(4);
        const len = rawLen > 32768 ? rawLen - 32768 : rawLen;
        if (len) this.need(e.readUInt16LE(6) * 2 ** 32 + e.readUInt32LE(8), len, 'data extent');
      } else {
        const child = e.readUInt32LE(4) + e.readUInt16LE(8) * 2 ** 32;
        await this.extentNode(await this.block(child, 'extent tree block'), level + 1);
      }
    }
  }

  private async indirect(iBlock: Buffer): Promise<void> {
    for (let i = 0; i < 12; i++) {
      const b = iBlock.readUInt32LE(i * 4);
      if (b) this.need(b, 1, 'data block');
    }
    for (let depth = 1; depth <= 3; depth++) {
      const b = iBlock.readUInt32LE((11 + depth) * 4);
      if (b) await this.indirectBlock(b, depth);
    }
  }

  private async indirectBlock(n: number, depth: number): Promise<void> {
    const buf = await this.block(n, 'indirect block');
    for (let off = 0; off < buf.length; off += 4) {
      const b = buf.readUInt32LE(off);
      if (!b) continue;
      if (depth === 1) this.need(b, 1, 'data block');
      else await this.indirectBlock(b, depth - 1);
    }
  }
}

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xa001 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

/** CRC-16 (the kernel's crc16: reflected poly 0xA001, raw register, no inversion). */
export function crc16(crc: number, data: Uint8Array): number {
  let c = crc & 0xffff;
  for (let i = 0; i < data.length; i++) c = CRC16_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c;
}

function hex(n: number): string {
  return n.toString(16).padStart(4, '0');
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
