// XFS used-block map: the whole data section minus the free extents listed by each allocation
// group's by-block-number free-space btree (bnobt).
//
// On-disk facts this relies on (all BIG-endian):
// - the primary superblock is at byte 0; the data section is sb_agcount allocation groups of
//   sb_agblocks blocks (the last one may be shorter), sb_dblocks blocks in all;
// - each AG starts with four sectors: superblock copy, AGF, AGI, AGFL; the AGF holds the bnobt
//   root and level count;
// - btree blocks use the "short form" header (AG-relative 32-bit pointers): 16 bytes on v4,
//   56 bytes on v5 (CRC) filesystems, whose bnobt magic also differs (ABTB vs AB3B);
// - leaf records and node keys are (startblock, blockcount) pairs of u32; a node stores all
//   its key slots (sized for the maximum record count) before its u32 child pointers.
// Everything not listed as free (AG headers, AGFL, btrees, inodes, internal log, data) is used.
//
// The btrees on disk are only current when the log holds nothing to replay. A mounted or crashed
// filesystem may have blocks allocated in the log only, their data already written: those would
// look free. So the internal log must end with an unmount record, or the whole fs is kept.
import { FilesystemError } from '../../errors.js';
import { readBytes, type ByteReader } from '../../source/byte-reader.js';
import { complement, normalize, type Extent } from '../extents.js';
import type { FsProbe, FsUsage } from './types.js';

const SB_MAGIC = 0x58465342; // XFSB
const AGF_MAGIC = 0x58414746; // XAGF
const BNOBT_MAGIC_V4 = 0x41425442; // ABTB
const BNOBT_MAGIC_V5 = 0x41423342; // AB3B
const VERSION_NUMBITS = 0x000f;
const INCOMPAT_NEEDSREPAIR = 0x10;
const MAX_BTREE_LEVELS = 16;
const MAX_READ = 8 << 20;

const LOG_RECORD_MAGIC = 0xfeedbabe;
const LOG_UNMOUNT_TRANS = 0x20;
const BB = 512; // the log is addressed in 512-byte basic blocks
/** Basic blocks checked on either side of the log head: 2 MiB, more than all in-flight log buffers. */
const LOG_WINDOW = 4096;

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
  label: string;
}

export const xfsProbe: FsProbe = {
  name: 'xfs',
  async probe(r: ByteReader): Promise<FsUsage | null> {
    if (r.size < 512) return null;
    const raw = await readBytes(r, 0, 512);
    if (raw.readUInt32BE(0) !== SB_MAGIC) return null;
    const sb = parseSuper(raw);
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
      const result = await agFreeExtents(r, sb, ag, agLength);
      if (result.listed !== result.agfFree) {
        // The AGF count is kept exactly in step with the btree; disagreement means the on-disk
        // state is not what the kernel would use. Keep the whole AG rather than trust either.
        warnings.push(`xfs AG ${ag}: free-space btree lists ${result.listed} free blocks but the AGF says ${result.agfFree}; mapping the whole AG`);
        wholeAgs.push({ offset: agStart * sb.blockSize, length: agLength * sb.blockSize });
        continue;
      }
      for (const e of result.extents) {
        free.push({ offset: (agStart + e.start) * sb.blockSize, length: e.count * sb.blockSize });
      }
    }
    const used = [...complement(normalize(free), fsBytes), ...wholeAgs];
    // The internal log is allocated and so never in the free lists; add it anyway, cheaply.
    if (log) used.push(log);
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

/** Byte range of the internal log (sb_logstart is an AG-encoded block number). */
function internalLog(sb: XfsSuper, fsBytes: number): Extent {
  const agno = Math.floor(sb.logStart / 2 ** sb.agBlkLog);
  const agbno = sb.logStart - agno * 2 ** sb.agBlkLog;
  const offset = (agno * sb.agBlocks + agbno) * sb.blockSize;
  const length = sb.logBlocks * sb.blockSize;
  if (agbno >= sb.agBlocks || length === 0 || offset + length > fsBytes) {
    throw new FilesystemError(`xfs: internal log (block ${agno}/${agbno}, ${sb.logBlocks} blocks) lies outside the filesystem`);
  }
  return { offset, length };
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
  if (!isPow2(sectSize) || sectSize < 512 || sectSize > 32768 || sectSize > blockSize) {
    throw new FilesystemError(`xfs superblock: absurd sector size ${sectSize}`);
  }
  const version = b.readUInt16BE(100) & VERSION_NUMBITS;
  if (version !== 4 && version !== 5) throw new FilesystemError(`xfs superblock: unsupported version ${version}`);
  const dblocks = u64(8);
  const agBlocks = b.readUInt32BE(84);
  const agCount = b.readUInt32BE(88);
  const agBlkLog = b.readUInt8(124);
  if (agBlocks < 16 || agBlocks > 2 ** 31 || agBlkLog !== Math.ceil(Math.log2(agBlocks))) {
    throw new FilesystemError(`xfs superblock: absurd AG size ${agBlocks} blocks (agblklog ${agBlkLog})`);
  }
  if (agCount === 0 || dblocks > agCount * agBlocks || dblocks <= (agCount - 1) * agBlocks) {
    throw new FilesystemError(`xfs superblock: ${dblocks} data blocks do not fit ${agCount} AGs of ${agBlocks} blocks`);
  }
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
    incompat: version === 5 ? b.readUInt32BE(216) : 0,
    uuid: formatUuid(b.subarray(32, 48)),
    label: cString(b.subarray(108, 120)),
  };
}

interface AgFree {
  extents: { start: number; count: number }[];
  listed: number;
  agfFree: number;
}

async function agFreeExtents(r: ByteReader, sb: XfsSuper, ag: number, agLength: number): Promise<AgFree> {
  const agStartByte = ag * sb.agBlocks * sb.blockSize;
  const agf = await readBytes(r, agStartByte + sb.sectSize, 512);
  const where = `xfs AG ${ag}`;
  if (agf.readUInt32BE(0) !== AGF_MAGIC) throw new FilesystemError(`${where}: bad AGF magic 0x${agf.readUInt32BE(0).toString(16)}`);
  if (agf.readUInt32BE(4) !== 1) throw new FilesystemError(`${where}: unknown AGF version ${agf.readUInt32BE(4)}`);
  if (agf.readUInt32BE(8) !== ag) throw new FilesystemError(`${where}: AGF claims to be AG ${agf.readUInt32BE(8)}`);
  if (agf.readUInt32BE(12) !== agLength) {
    throw new FilesystemError(`${where}: AGF length ${agf.readUInt32BE(12)} blocks, superblock implies ${agLength}`);
  }
  const root = agf.readUInt32BE(16);
  const levels = agf.readUInt32BE(28);
  const agfFree = agf.readUInt32BE(52);
  if (levels < 1 || levels > MAX_BTREE_LEVELS) throw new FilesystemError(`${where}: absurd free-space btree height ${levels}`);
  if (root === 0 || root >= agLength) throw new FilesystemError(`${where}: free-space btree root ${root} lies outside the AG (${agLength} blocks)`);

  const extents = await walkBnobt(r, sb, ag, agLength, root, levels);
  extents.sort((a, b) => a.start - b.start);
  let listed = 0;
  let prevEnd = 0;
  for (const e of extents) {
    if (e.count === 0 || e.start + e.count > agLength) {
      throw new FilesystemError(`${where}: free extent ${e.start}+${e.count} lies outside the AG (${agLength} blocks)`);
    }
    if (e.start < prevEnd) throw new FilesystemError(`${where}: free extents overlap at block ${e.start}`);
    prevEnd = e.start + e.count;
    listed += e.count;
  }
  return { extents, listed, agfFree };
}

/** Reads the bnobt level by level (each level's blocks in disk order) and returns its leaf records. */
async function walkBnobt(
  r: ByteReader,
  sb: XfsSuper,
  ag: number,
  agLength: number,
  root: number,
  levels: number,
): Promise<{ start: number; count: number }[]> {
  const where = `xfs AG ${ag} free-space btree`;
  const bs = sb.blockSize;
  const headerSize = sb.version === 5 ? 56 : 16;
  const magic = sb.version === 5 ? BNOBT_MAGIC_V5 : BNOBT_MAGIC_V4;
  const leafMax = Math.floor((bs - headerSize) / 8);
  const nodeMax = Math.floor((bs - headerSize) / 12);
  const agStartByte = ag * sb.agBlocks * bs;
  const seen = new Set<number>([root]);
  const records: { start: number; count: number }[] = [];
  let frontier = [root];
  for (let level = levels - 1; level >= 0; level--) {
    const next: number[] = [];
    for await (const { block, buf } of readBlocks(r, agStartByte, bs, frontier)) {
      const got = buf.readUInt32BE(0);
      if (got !== magic) throw new FilesystemError(`${where}: block ${block} has bad magic 0x${got.toString(16)}`);
      const blockLevel = buf.readUInt16BE(4);
      const numrecs = buf.readUInt16BE(6);
      if (blockLevel !== level) throw new FilesystemError(`${where}: block ${block} is at level ${blockLevel}, expected ${level}`);
      if (numrecs > (level === 0 ? leafMax : nodeMax) || (level > 0 && numrecs === 0)) {
        throw new FilesystemError(`${where}: block ${block} has an impossible record count ${numrecs}`);
      }
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
        if (child === 0 || child >= agLength) throw new FilesystemError(`${where}: block ${block} points outside the AG (${child})`);
        if (seen.has(child)) throw new FilesystemError(`${where}: block ${child} is referenced twice`);
        seen.add(child);
        next.push(child);
      }
    }
    frontier = next;
  }
  return records;
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
