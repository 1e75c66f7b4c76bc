// The metadata clusters, generated in file order from the layout and the sizing table; each
// generator holds at most one table in memory.
import type { Extent } from '../../map/extents.js';
import { mappedClusters } from '../cluster-plan.js';
import type { ClusterRun } from '../../incremental/cluster-index.js';
import { CLUSTER_SIZE, L2_ENTRIES, OFLAG_COPIED, REFCOUNTS_PER_BLOCK, ZERO_ENTRY, compressedEntry, encodeHeader, plainEntry } from './format.js';
import { sizeOf, storedClusters, type AnySizeTable, type Layout } from './layout.js';

export function* metadataClusters(layout: Layout, used: readonly Extent[], table: AnySizeTable, compressionType: 0 | 1, plain: boolean, zeroRuns?: readonly ClusterRun[]): Generator<Buffer> {
  yield encodeHeader({
    virtualSize: layout.virtualSize,
    l1Size: layout.l1Size,
    l1Offset: layout.l1Offset,
    refTableOffset: layout.refTableOffset,
    refTableClusters: layout.refTableClusters,
    compressionType,
  });
  yield l1Table(layout);
  yield refcountTable(layout);
  yield* refcountBlocks(layout, used, table);
  yield* l2Tables(layout, used, table, plain, zeroRuns);
}

function l1Table(layout: Layout): Buffer {
  const b = Buffer.alloc(Math.ceil((layout.l1Size * 8) / CLUSTER_SIZE) * CLUSTER_SIZE);
  for (const [l1i, off] of layout.l2Offsets) b.writeBigUInt64BE(OFLAG_COPIED | BigInt(off), l1i * 8);
  return b;
}

function refcountTable(layout: Layout): Buffer {
  const b = Buffer.alloc(layout.refTableClusters * CLUSTER_SIZE);
  for (let i = 0; i < layout.refBlockCount; i++) b.writeBigUInt64BE(BigInt(layout.refBlocksOffset + i * CLUSTER_SIZE), i * 8);
  return b;
}

/**
 * Refcounts: 1 for each metadata cluster; for data, one per stored cluster touching the host
 * cluster (compressed clusters share host clusters - qemu counts each sharer).
 */
function* refcountBlocks(layout: Layout, used: readonly Extent[], table: AnySizeTable): Generator<Buffer> {
  const hits = storedClusters(used, table, layout.dataOffset);
  let pending: { first: number; last: number } | undefined;
  for (let blk = 0; blk < layout.refBlockCount; blk++) {
    const counts = new Uint16Array(REFCOUNTS_PER_BLOCK);
    const base = blk * REFCOUNTS_PER_BLOCK;
    const end = base + REFCOUNTS_PER_BLOCK;
    for (let c = base; c < Math.min(end, layout.metadataClusters); c++) counts[c - base] = 1;
    for (;;) {
      if (!pending) {
        const next = hits.next();
        if (next.done) break;
        const { offset, size } = next.value;
        pending = { first: Math.floor(offset / CLUSTER_SIZE), last: Math.floor((offset + size - 1) / CLUSTER_SIZE) };
      }
      if (pending.first >= end) break;
      for (let c = pending.first; c <= Math.min(pending.last, end - 1); c++) counts[c - base]!++;
      if (pending.last >= end) { pending.first = end; break; }
      pending = undefined;
    }
    const b = Buffer.alloc(CLUSTER_SIZE);
    for (let i = 0; i < counts.length; i++) if (counts[i]) b.writeUInt16BE(counts[i]!, i * 2);
    yield b;
  }
}

/**
 * One L2 table per planned L1 index (some may stay empty: all their clusters were zero). With
 * ZERORUNS (a delta) every zero cluster is written as such: the runs, and mapped all-zero ones.
 */
function* l2Tables(layout: Layout, used: readonly Extent[], table: AnySizeTable, plain: boolean, zeroRuns?: readonly ClusterRun[]): Generator<Buffer> {
  const entries = l2Entries(used, table, layout.dataOffset, plain, zeroRuns);
  let next = entries.next();
  for (const l1i of layout.l2Offsets.keys()) {
    const b = Buffer.alloc(CLUSTER_SIZE);
    while (!next.done && Math.floor(next.value.guest / L2_ENTRIES) === l1i) {
      b.writeBigUInt64BE(next.value.entry, (next.value.guest % L2_ENTRIES) * 8);
      next = entries.next();
    }
    yield b;
  }
}

/** Every non-empty L2 entry, in guest order; all-zero clusters only for a delta (ZERORUNS set). */
function* l2Entries(used: readonly Extent[], table: AnySizeTable, dataOffset: number, plain: boolean, zeroRuns?: readonly ClusterRun[]): Generator<{ guest: number; entry: bigint }> {
  let k = 0;
  let offset = dataOffset;
  const mapped = mappedClusters(used, CLUSTER_SIZE);
  let m = mapped.next();
  const runs = (zeroRuns ?? [])[Symbol.iterator]();
  let run = runs.next();
  let inRun = 0;
  // the mapped clusters and the zero runs are disjoint: merge them by guest cluster
  while (!m.done || !run.done) {
    const runGuest = run.done ? Infinity : run.value.first + inRun;
    if (m.done || runGuest < m.value) {
      yield { guest: runGuest, entry: ZERO_ENTRY };
      if (++inRun >= run.value!.count) { run = runs.next(); inRun = 0; }
      continue;
    }
    const code = table.codes[k++]!;
    if (code === 0) {
      if (zeroRuns) yield { guest: m.value, entry: ZERO_ENTRY };
    } else {
      const size = sizeOf(code, table);
      yield { guest: m.value, entry: plain ? plainEntry(offset) : compressedEntry(offset, size) };
      offset += size;
    }
    m = mapped.next();
  }
}
