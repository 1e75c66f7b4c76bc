// XFS used-block map: the whole data section minus the free extents listed by each allocation
// group's free-space btrees.
//
// On-disk facts this relies on (all BIG-endian, except v5 CRCs):
// - the primary superblock is at byte 0; the data section is sb_agcount allocation groups of
//   sb_agblocks blocks (the last one may be shorter), sb_dblocks blocks in all;
// - each AG starts with four sectors: superblock copy, AGF, AGI, AGFL; the AGF holds the roots
//   and heights of the two free-space btrees, which list the same free extents: the bnobt sorted
//   by block number, the cntbt by size (then block number);
// - btree blocks use the "short form" header (AG-relative 32-bit pointers, sibling links per
//   level): 16 bytes on v4, 56 bytes on v5 (CRC) filesystems, whose magics also differ
//   (ABTB/ABTC vs AB3B/AB3C);
// - leaf records and node keys are (startblock, blockcount) pairs of u32; a node stores all
//   its key slots (sized for the maximum record count) before its u32 child pointers;
// - v5 metadata carries a CRC-32C (the standard one: seed ~0, final complement) over the whole
//   sector or block with the CRC field counted as zero, stored little-endian; superblock over
//   sb_sectsize bytes (field at 224), AGF over a sector (216), btree blocks over the block (52).
// Everything not listed as free (AG headers, AGFL, btrees, inodes, internal log, data) is used.
//
// Trusting the map (issue 11): an image that silently misses used data is the worst failure we
// can have, so the free-space btrees are only believed when they agree with everything else we
// can check cheaply; otherwise the probe throws FilesystemError (one line) and the caller copies
// the whole partition. Checked: on v5, the CRC of the superblock, of every AGF and of every
// btree block read, and each block's owner AG, own address (bb_blkno) and filesystem uuid
// (sb_meta_uuid when that feature is set); on v4 and v5, every count, pointer and height before
// it is used, sibling links, no block reached twice, records inside the AG past its headers, the
// bnobt sorted and non-overlapping, the cntbt sorted by (size, block), both trees listing exactly
// the same extents, agf_longest equal to the largest, the AGF free-list slots and count
// consistent, and no free extent covering a btree block read or the internal log. A random
// corruption of one v4 structure (no CRCs) cannot make both btrees lie in the same way, so the
// bnobt/cntbt comparison is what catches damaged v4 free-space records.
// The one disagreement we do not refuse: an AGF free count that differs from what the btrees
// list keeps that AG whole (with a warning) instead.
//
// The btrees on disk are only current when the log holds nothing to replay. A mounted or crashed
// filesystem may have blocks allocated in the log only, their data already written: those would
// look free. So the internal log must end with an unmount record, or the whole fs is kept.
import { FilesystemError } from '../../errors.js';
import { readBytes, type ByteReader } from '../../source/byte-reader.js';
import { crc32cUpdate } from '../crc32c.js';
import { complement, normalize, type Extent } from '../extents.js';
import type { FsProbe, FsUsage } from './types.js';

const SB_MAGIC = 0x58465342; // XFSB
const AGF_MAGIC = 0x58414746; // XAGF
const VERSION_NUMBITS = 0x000f;
const INCOMPAT_META_UUID = 0x04;
const INCOMPAT_NEEDSREPAIR = 0x10;
const SB_CRC_OFF = 224;
const SB_META_UUID_OFF = 248;
const AGF_UUID_OFF = 64;
const AGF_CRC_OFF = 216;
/** v5 AGFL header (magic, seqno, uuid, lsn, crc) before its block numbers; v4 has none. */
const AGFL_V5_HEADER = 36;
const SBLOCK_CRC_OFF = 52;
const NULL_AGBLOCK = 0xffffffff;
/** The kernel refuses AGs (the last one included) smaller than this. */
const MIN_AG_BLOCKS = 64;
const MAX_BTREE_LEVELS = 16;
const MAX_READ = 8 << 20;
/** Btree blocks of one level held in memory at once (read in disk order, checked in key order). */
const LEVEL_CHUNK = 1024;

const LOG_RECORD_MAGIC = 0xfeedbabe;
const LOG_UNMOUNT_TRANS = 0x20;
const BB = 512; // the log is addressed in 512-byte basic blocks
/** Basic blocks checked on either side of the log head: 2 MiB, more than all in-flight log buffers. */
const LOG_WINDOW = 4096;

interface FreeTree {
  name: string;
  magicV4: number;
  magicV5: number;
}
const BNOBT: FreeTree = { name: 'bnobt', magicV4: 0x41425442 /* ABTB */, magicV5: 0x41423342 /* AB3B */ };
const CNTBT: FreeTree = { name: 'cntbt', magicV4: 0x41425443 /* ABTC */, magicV5: 0x41423343 /* AB3C */ };

interface XfsSuper {
  blockSize: number;
  sectSize: number;
  dblocks: number;
  agBlocks: number;
  agCount: number;
  agBlkLog: number;
  version: number;
  logStart: number;
  logBlocks: number;
  rblocks: number;
  incompat: number;
  uuid: string;
  /** The uuid v5 metadata is stamped with. */
  metaUuid: Buffer;
  label: string;
}

interface InternalLog extends Extent {
  ag: number;
  agbno: number;
  blocks: number;
}

interface FreeRec {
  start: number;
  count: number;
}

export const xfsProbe: FsProbe = {
  name: 'xfs',
  async probe(r: ByteReader): Promise<FsUsage | null> {
    if (r.size < 512) return null;
    const head = await readBytes(r, 0, 512);
    if (head.readUInt32BE(0) !== SB_MAGIC) return null;
    const sb = parseSuper(await superblockSector(r, head));
    const fsBytes = sb.dblocks * sb.blockSize;
    if (fsBytes > r.size) {
      throw new FilesystemError(`xfs: superblock claims ${fsBytes} bytes (${sb.dblocks} blocks of ${sb.blockSize}) but the partition holds ${r.size}`);
    }
    const warnings: string[] = [];
    if (sb.rblocks > 0) warnings.push(`xfs: filesystem has a ${sb.rblocks}-block realtime section on another device, not included`);
    if (sb.logStart === 0) warnings.push('xfs: log is on an external device, not included, and cannot be checked for pending changes');
    if (sb.incompat & INCOMPAT_NEEDSREPAIR) warnings.push('xfs: superblock flagged as needing repair');

    const log = sb.logStart !== 0 ? internalLog(sb, fsBytes) : null;
    if (log) {
      const dirty = await logDirtyReason(r, log.offset, log.length / BB);
      if (dirty) {
        return {
          fs: 'xfs',
          used: [{ offset: 0, length: fsBytes }],
          blockSize: sb.blockSize,
          method: 'xfs whole filesystem (log not clean)',
          uuid: sb.uuid,
          ...(sb.label ? { label: sb.label } : {}),
          warnings: [...warnings, `xfs: ${dirty} (mounted or not cleanly unmounted?); mapping the whole filesystem`],
        };
      }
    }

    const free: Extent[] = [];
    const wholeAgs: Extent[] = [];
    for (let ag = 0; ag < sb.agCount; ag++) {
      const agStart = ag * sb.agBlocks;
      const agLength = Math.min(sb.agBlocks, sb.dblocks - agStart);
      const result = await agFreeExtents(r, sb, ag, agLength, log);
      if (result.listed !== result.agfFree) {
        // The AGF count is kept exactly in step with the btrees; disagreement means the on-disk
        // state is not what the kernel would use. Keep the whole AG rather than trust either.
        warnings.push(`xfs AG ${ag}: free-space btrees list ${result.listed} free blocks but the AGF says ${result.agfFree}; mapping the whole AG`);
        wholeAgs.push({ offset: agStart * sb.blockSize, length: agLength * sb.blockSize });
        continue;
      }
      for (const e of result.extents) {
        free.push({ offset: (agStart + e.start) * sb.blockSize, length: e.count * sb.blockSize });
      }
    }
    const used = [...complement(normalize(free), fsBytes), ...wholeAgs];
    // The internal log is allocated and so never in the free lists; add it anyway, cheaply.
    if (log) used.push({ offset: log.offset, length: log.length });
    return {
      fs: 'xfs',
      used: normalize(used),
      blockSize: sb.blockSize,
      method: 'xfs free-space btrees',
      uuid: sb.uuid,
      ...(sb.label ? { label: sb.label } : {}),
      ...(warnings.length ? { warnings } : {}),
    };
  },
};

/** Byte range and AG position of the internal log (sb_logstart is an AG-encoded block number). */
function internalLog(sb: XfsSuper, fsBytes: number): InternalLog {
  const agno = Math.floor(sb.logStart / 2 ** sb.agBlkLog);
  const agbno = sb.logStart - agno * 2 ** sb.agBlkLog;
  const offset = (agno * sb.agBlocks + agbno) * sb.blockSize;
  const length = sb.logBlocks * sb.blockSize;
  if (agbno >= sb.agBlocks || length === 0 || offset + length > fsBytes) {
    throw new FilesystemError(`xfs: internal log (block ${agno}/${agbno}, ${sb.logBlocks} blocks) lies outside the filesystem`);
  }
  return { offset, length, ag: agno, agbno, blocks: sb.logBlocks };
}

/**
 * Null when the log ends with an unmount record (nothing to replay), else why it cannot be
 * trusted. Every basic block of the log starts with the number of the lap ("cycle") it was
 * written in (record headers carry it after their magic); the head is where the cycle drops by
 * one. The last record before the head must be a lone unmount operation ending at the head.
 * Anything unusual (head at the wrap point, torn or odd records) counts as not clean.
 */
async function logDirtyReason(r: ByteReader, start: number, bbs: number): Promise<string | null> {
  const cycleOf = (b: Buffer, bb: number): number =>
    b.readUInt32BE(bb * BB) === LOG_RECORD_MAGIC ? b.readUInt32BE(bb * BB + 4) : b.readUInt32BE(bb * BB);
  const cycleAt = async (bb: number): Promise<number> => cycleOf(await readBytes(r, start + bb * BB, 8), 0);
  const firstCycle = await cycleAt(0);
  const lastCycle = await cycleAt(bbs - 1);
  if (firstCycle === lastCycle) return 'log head is at the wrap point, cannot confirm a clean unmount';
  if (lastCycle !== firstCycle - 1) return `log cycles ${firstCycle} and ${lastCycle} do not follow each other`;
  let lo = 0;
  let hi = bbs - 1;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if ((await cycleAt(mid)) === firstCycle) lo = mid;
    else hi = mid;
  }
  const head = hi;
  // Past the head: only the previous lap, or the binary search jumped over a hole.
  const afterCount = Math.min(LOG_WINDOW, bbs - head);
  const after = await readBytes(r, start + head * BB, afterCount * BB);
  for (let i = 0; i < afterCount; i++) {
    if (cycleOf(after, i) !== lastCycle) return 'log has blocks of the current cycle past its head';
  }
  // Before the head: the last record, all of the current cycle.
  const beforeStart = Math.max(0, head - LOG_WINDOW);
  const before = await readBytes(r, start + beforeStart * BB, (head - beforeStart) * BB);
  let rec = -1;
  for (let i = head - beforeStart - 1; i >= 0; i--) {
    if (cycleOf(before, i) !== firstCycle) return 'log has a hole before its head';
    if (before.readUInt32BE(i * BB) === LOG_RECORD_MAGIC) {
      rec = i;
      break;
    }
  }
  if (rec < 0) return 'no log record found before the log head';
  const h = before.subarray(rec * BB, (rec + 1) * BB);
  const version = h.readUInt32BE(8);
  const length = h.readUInt32BE(12);
  const ops = h.readUInt32BE(40);
  const headerSize = h.readUInt32BE(320);
  // Version 2 logs with buffers over 32 KiB spread the header over several basic blocks.
  const headerBbs = version & 2 && headerSize > 32768 ? Math.ceil(headerSize / 32768) : 1;
  if (beforeStart + rec + headerBbs + Math.ceil(length / BB) !== head) return 'last log record does not end at the log head';
  if (ops !== 1 || rec + headerBbs >= head - beforeStart) return 'log does not end with an unmount record';
  // First operation header: tid, len, client id, flags (the tid word carries the cycle stamp).
  const flags = before.readUInt8((rec + headerBbs) * BB + 9);
  return flags & LOG_UNMOUNT_TRANS ? null : 'log does not end with an unmount record';
}

function isPow2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Throws unless the little-endian CRC-32C at CRC_OFF matches BUF (the field counted as zero). */
function verifyCrc(buf: Buffer, crcOff: number, what: string): void {
  let c = crc32cUpdate(0xffffffff, buf.subarray(0, crcOff));
  c = crc32cUpdate(c, ZERO_CRC);
  c = crc32cUpdate(c, buf.subarray(crcOff + 4));
  const computed = ~c >>> 0;
  const stored = buf.readUInt32LE(crcOff);
  if (stored !== computed) {
    throw new FilesystemError(`${what} CRC mismatch (stored 0x${hex(stored)}, computed 0x${hex(computed)})`);
  }
}
const ZERO_CRC = new Uint8Array(4);

function hex(n: number): string {
  return n.toString(16).padStart(8, '0');
}

/** The whole superblock sector (v5: CRC-checked), given its first 512 bytes. */
async function superblockSector(r: ByteReader, head: Buffer): Promise<Buffer> {
  const version = head.readUInt16BE(100) & VERSION_NUMBITS;
  if (version !== 4 && version !== 5) throw new FilesystemError(`xfs superblock: unsupported version ${version}`);
  const sectSize = head.readUInt16BE(102);
  if (!isPow2(sectSize) || sectSize < 512 || sectSize > 32768) {
    throw new FilesystemError(`xfs superblock: absurd sector size ${sectSize}`);
  }
  if (sectSize > r.size) throw new FilesystemError(`xfs superblock: sector size ${sectSize} exceeds the partition (${r.size} bytes)`);
  const raw = sectSize > head.length ? await readBytes(r, 0, sectSize) : head;
  if (version === 5) verifyCrc(raw, SB_CRC_OFF, 'xfs superblock');
  return raw;
}

function parseSuper(b: Buffer): XfsSuper {
  const u64 = (off: number): number => {
    const v = b.readBigUInt64BE(off);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FilesystemError(`xfs superblock: field at byte ${off} is absurdly large (${v})`);
    return Number(v);
  };
  const blockSize = b.readUInt32BE(4);
  const blockLog = b.readUInt8(120);
  if (!isPow2(blockSize) || blockSize < 512 || blockSize > 65536 || 1 << blockLog !== blockSize) {
    throw new FilesystemError(`xfs superblock: absurd block size ${blockSize} (blocklog ${blockLog})`);
  }
  const sectSize = b.readUInt16BE(102);
  if (sectSize > blockSize) throw new FilesystemError(`xfs superblock: sector size ${sectSize} exceeds the block size ${blockSize}`);
  const version = b.readUInt16BE(100) & VERSION_NUMBITS;
  const dblocks = u64(8);
  const agBlocks = b.readUInt32BE(84);
  const agCount = b.readUInt32BE(88);
  const agBlkLog = b.readUInt8(124);
  if (agBlocks < MIN_AG_BLOCKS || agBlocks > 2 ** 31 || agBlkLog !== Math.ceil(Math.log2(agBlocks))) {
    throw new FilesystemError(`xfs superblock: absurd AG size ${agBlocks} blocks (agblklog ${agBlkLog})`);
  }
  if (agCount === 0 || dblocks > agCount * agBlocks || dblocks < (agCount - 1) * agBlocks + MIN_AG_BLOCKS) {
    throw new FilesystemError(`xfs superblock: ${dblocks} data blocks do not fit ${agCount} AGs of ${agBlocks} blocks`);
  }
  const incompat = version === 5 ? b.readUInt32BE(216) : 0;
  const uuid = Buffer.from(b.subarray(32, 48));
  return {
    blockSize,
    sectSize,
    dblocks,
    agBlocks,
    agCount,
    agBlkLog,
    version,
    logStart: u64(48),
    logBlocks: b.readUInt32BE(96),
    rblocks: u64(16),
    incompat,
    uuid: formatUuid(uuid),
    metaUuid: incompat & INCOMPAT_META_UUID ? Buffer.from(b.subarray(SB_META_UUID_OFF, SB_META_UUID_OFF + 16)) : uuid,
    label: cString(b.subarray(108, 120)),
  };
}

interface AgFree {
  extents: FreeRec[];
  listed: number;
  agfFree: number;
}

async function agFreeExtents(r: ByteReader, sb: XfsSuper, ag: number, agLength: number, log: InternalLog | null): Promise<AgFree> {
  const agStartByte = ag * sb.agBlocks * sb.blockSize;
  const agf = await readBytes(r, agStartByte + sb.sectSize, sb.sectSize);
  const where = `xfs AG ${ag}`;
  if (agf.readUInt32BE(0) !== AGF_MAGIC) throw new FilesystemError(`${where}: bad AGF magic 0x${agf.readUInt32BE(0).toString(16)}`);
  if (sb.version === 5) {
    verifyCrc(agf, AGF_CRC_OFF, `${where}: AGF`);
    if (!agf.subarray(AGF_UUID_OFF, AGF_UUID_OFF + 16).equals(sb.metaUuid)) {
      throw new FilesystemError(`${where}: AGF belongs to another filesystem (uuid ${formatUuid(agf.subarray(AGF_UUID_OFF, AGF_UUID_OFF + 16))})`);
    }
  }
  if (agf.readUInt32BE(4) !== 1) throw new FilesystemError(`${where}: unknown AGF version ${agf.readUInt32BE(4)}`);
  if (agf.readUInt32BE(8) !== ag) throw new FilesystemError(`${where}: AGF claims to be AG ${agf.readUInt32BE(8)}`);
  if (agf.readUInt32BE(12) !== agLength) {
    throw new FilesystemError(`${where}: AGF length ${agf.readUInt32BE(12)} blocks, superblock implies ${agLength}`);
  }
  const bnoRoot = agf.readUInt32BE(16);
  const cntRoot = agf.readUInt32BE(20);
  const bnoLevels = agf.readUInt32BE(28);
  const cntLevels = agf.readUInt32BE(32);
  const flFirst = agf.readUInt32BE(40);
  const flLast = agf.readUInt32BE(44);
  const flCount = agf.readUInt32BE(48);
  const agfFree = agf.readUInt32BE(52);
  const longest = agf.readUInt32BE(56);

  // The free list (AGFL) blocks are in neither btree, so they count as used; only its slots
  // must make sense. It is a ring of flCount slots from flFirst to flLast.
  const agflSlots = (sb.sectSize - (sb.version === 5 ? AGFL_V5_HEADER : 0)) / 4;
  if (flFirst >= agflSlots || flLast >= agflSlots || flCount > agflSlots) {
    throw new FilesystemError(`${where}: AGF free list slots ${flFirst}..${flLast} (${flCount}) do not fit the ${agflSlots}-slot AGFL`);
  }
  if (flCount > 0 && ((flLast - flFirst + agflSlots) % agflSlots) + 1 !== flCount) {
    throw new FilesystemError(`${where}: AGF free list count ${flCount} does not match its slots ${flFirst}..${flLast}`);
  }
  if (agfFree + flCount > agLength) throw new FilesystemError(`${where}: AGF counts ${agfFree} free blocks (+${flCount} on the free list) in a ${agLength}-block AG`);

  // Blocks before this one hold the four AG header sectors: never free, never a btree block.
  const firstBlock = Math.ceil((4 * sb.sectSize) / sb.blockSize);
  const btreeBlocks = new Set<number>();
  const walk = (tree: FreeTree, root: number, levels: number): Promise<FreeRec[]> =>
    walkFreeBtree(r, sb, { ag, agLength, firstBlock }, tree, root, levels, btreeBlocks);
  const byBlock = await walk(BNOBT, bnoRoot, bnoLevels);
  const bySize = await walk(CNTBT, cntRoot, cntLevels);

  const inAg = (tree: FreeTree, e: FreeRec): void => {
    if (e.count === 0 || e.start < firstBlock || e.start + e.count > agLength) {
      throw new FilesystemError(`${where} ${tree.name}: free extent ${e.start}+${e.count} lies outside the AG's blocks ${firstBlock}..${agLength - 1}`);
    }
  };
  let listed = 0;
  let prevEnd = 0;
  for (const e of byBlock) {
    inAg(BNOBT, e);
    if (e.start < prevEnd) throw new FilesystemError(`${where} bnobt: free extents overlap or are out of order at block ${e.start}`);
    prevEnd = e.start + e.count;
    listed += e.count;
  }
  let prev: FreeRec | null = null;
  for (const e of bySize) {
    inAg(CNTBT, e);
    if (prev && (e.count < prev.count || (e.count === prev.count && e.start <= prev.start))) {
      throw new FilesystemError(`${where} cntbt: free extents out of size order at ${e.start}+${e.count}`);
    }
    prev = e;
  }
  // Both trees must list the same extents: damage to one of them shows as a disagreement.
  if (bySize.length !== byBlock.length) {
    throw new FilesystemError(`${where}: the free-space btrees disagree: bnobt lists ${byBlock.length} extents, cntbt ${bySize.length}`);
  }
  const sizeSorted = [...bySize].sort((a, b) => a.start - b.start);
  for (let i = 0; i < byBlock.length; i++) {
    const a = byBlock[i]!;
    const b = sizeSorted[i]!;
    if (a.start !== b.start || a.count !== b.count) {
      throw new FilesystemError(`${where}: the free-space btrees disagree: bnobt has ${a.start}+${a.count} where cntbt has ${b.start}+${b.count}`);
    }
  }
  const largest = bySize.length ? bySize[bySize.length - 1]!.count : 0;
  if (longest !== largest) throw new FilesystemError(`${where}: AGF says the longest free extent is ${longest} blocks, the btrees ${largest}`);

  // Free extents must not cover what is known to be in use.
  for (const block of btreeBlocks) {
    if (covering(byBlock, block, 1)) throw new FilesystemError(`${where}: free-space btree block ${block} is itself listed as free`);
  }
  if (log && log.ag === ag && covering(byBlock, log.agbno, log.blocks)) {
    throw new FilesystemError(`${where}: a free extent overlaps the internal log (blocks ${log.agbno}+${log.blocks})`);
  }
  return { extents: byBlock, listed, agfFree };
}

/** Whether any extent of SORTED (by start, disjoint) overlaps [start, start + count). */
function covering(sorted: readonly FreeRec[], start: number, count: number): boolean {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    // first extent ending after START
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]!.start + sorted[mid]!.count <= start) lo = mid + 1;
    else hi = mid;
  }
  return lo < sorted.length && sorted[lo]!.start < start + count;
}

interface AgGeometry {
  ag: number;
  agLength: number;
  /** First block past the AG headers. */
  firstBlock: number;
}

/**
 * Reads a free-space btree level by level and returns its leaf records in key order. Each
 * level's blocks are read in disk order (runs of adjacent blocks together) but checked in key
 * order, so the sibling links can be followed. SEEN collects every block read, across trees.
 */
async function walkFreeBtree(
  r: ByteReader,
  sb: XfsSuper,
  g: AgGeometry,
  tree: FreeTree,
  root: number,
  levels: number,
  seen: Set<number>,
): Promise<FreeRec[]> {
  const where = `xfs AG ${g.ag} ${tree.name} free-space btree`;
  const bs = sb.blockSize;
  const v5 = sb.version === 5;
  const headerSize = v5 ? 56 : 16;
  const magic = v5 ? tree.magicV5 : tree.magicV4;
  const leafMax = Math.floor((bs - headerSize) / 8);
  const nodeMax = Math.floor((bs - headerSize) / 12);
  const agStartByte = g.ag * sb.agBlocks * bs;
  const daddrPerBlock = BigInt(bs / BB);
  const pointerOk = (p: number): boolean => p >= g.firstBlock && p < g.agLength;
  if (levels < 1 || levels > MAX_BTREE_LEVELS) throw new FilesystemError(`${where}: absurd height ${levels}`);
  if (!pointerOk(root)) throw new FilesystemError(`${where}: root ${root} lies outside the AG's blocks ${g.firstBlock}..${g.agLength - 1}`);
  if (seen.has(root)) throw new FilesystemError(`${where}: root ${root} is already part of a free-space btree`);
  seen.add(root);

  const records: FreeRec[] = [];
  let frontier = [root];
  for (let level = levels - 1; level >= 0; level--) {
    const next: number[] = [];
    let prev: { block: number; right: number } | null = null;
    for (let c = 0; c < frontier.length; c += LEVEL_CHUNK) {
      const chunk = frontier.slice(c, c + LEVEL_CHUNK);
      const bufs = new Map<number, Buffer>();
      for await (const { block, buf } of readBlocks(r, agStartByte, bs, chunk)) bufs.set(block, buf);
      for (const block of chunk) {
        const buf = bufs.get(block)!;
        const got = buf.readUInt32BE(0);
        if (got !== magic) throw new FilesystemError(`${where}: block ${block} has bad magic 0x${got.toString(16)}`);
        if (v5) {
          verifyCrc(buf, SBLOCK_CRC_OFF, `${where}: block ${block}`);
          const blkno = buf.readBigUInt64BE(16);
          const want = (BigInt(g.ag) * BigInt(sb.agBlocks) + BigInt(block)) * daddrPerBlock;
          if (blkno !== want) throw new FilesystemError(`${where}: block ${block} says it is at sector ${blkno}, not ${want}`);
          const owner = buf.readUInt32BE(48);
          if (owner !== g.ag) throw new FilesystemError(`${where}: block ${block} says it belongs to AG ${owner}`);
          if (!buf.subarray(32, 48).equals(sb.metaUuid)) {
            throw new FilesystemError(`${where}: block ${block} belongs to another filesystem (uuid ${formatUuid(buf.subarray(32, 48))})`);
          }
        }
        const blockLevel = buf.readUInt16BE(4);
        const numrecs = buf.readUInt16BE(6);
        if (blockLevel !== level) throw new FilesystemError(`${where}: block ${block} is at level ${blockLevel}, expected ${level}`);
        if (numrecs === 0 ? level > 0 || levels > 1 : numrecs > (level === 0 ? leafMax : nodeMax)) {
          throw new FilesystemError(`${where}: block ${block} has an impossible record count ${numrecs}`);
        }
        const left = buf.readUInt32BE(8);
        const right = buf.readUInt32BE(12);
        const wantLeft = prev ? prev.block : NULL_AGBLOCK;
        if (left !== wantLeft) throw new FilesystemError(`${where}: block ${block} has left sibling ${sibling(left)}, expected ${sibling(wantLeft)}`);
        if (prev && prev.right !== block) {
          throw new FilesystemError(`${where}: block ${prev.block} has right sibling ${sibling(prev.right)}, expected ${block}`);
        }
        prev = { block, right };
        if (level === 0) {
          for (let i = 0; i < numrecs; i++) {
            const off = headerSize + i * 8;
            records.push({ start: buf.readUInt32BE(off), count: buf.readUInt32BE(off + 4) });
          }
          continue;
        }
        const ptrBase = headerSize + nodeMax * 8;
        for (let i = 0; i < numrecs; i++) {
          const child = buf.readUInt32BE(ptrBase + i * 4);
          if (!pointerOk(child)) throw new FilesystemError(`${where}: block ${block} points outside the AG (${child})`);
          if (seen.has(child)) throw new FilesystemError(`${where}: block ${child} is referenced twice`);
          seen.add(child);
          next.push(child);
        }
      }
    }
    if (prev && prev.right !== NULL_AGBLOCK) {
      throw new FilesystemError(`${where}: last block ${prev.block} of level ${level} has right sibling ${sibling(prev.right)}`);
    }
    frontier = next;
  }
  return records;
}

function sibling(b: number): string {
  return b === NULL_AGBLOCK ? 'none' : String(b);
}

/** Yields the given AG blocks in disk order, reading runs of adjacent blocks together. */
async function* readBlocks(
  r: ByteReader,
  agStartByte: number,
  bs: number,
  blocks: number[],
): AsyncGenerator<{ block: number; buf: Buffer }> {
  const sorted = [...blocks].sort((a, b) => a - b);
  let i = 0;
  while (i < sorted.length) {
    let j = i + 1;
    while (j < sorted.length && sorted[j] === sorted[j - 1]! + 1 && (j - i + 1) * bs <= MAX_READ) j++;
    const first = sorted[i]!;
    const buf = await readBytes(r, agStartByte + first * bs, (j - i) * bs);
    for (let k = i; k < j; k++) yield { block: sorted[k]!, buf: buf.subarray((k - i) * bs, (k - i + 1) * bs) };
    i = j;
  }
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('utf8').trim();
}

function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
