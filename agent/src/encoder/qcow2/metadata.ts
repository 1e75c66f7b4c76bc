// The metadata clusters, generated in file order from the layout and the sizing table; each
// generator holds at most one table in memory.
import type { Extent } from '../../map/extents.js';
import { CLUSTER_SIZE, L2_ENTRIES, OFLAG_COPIED, REFCOUNTS_PER_BLOCK, compressedEntry, encodeHeader, plainEntry } from './format.js';
import { storedClusters, type Layout, type SizeTable } from './layout.js';

export function* metadataClusters(layout: Layout, used: readonly Extent[], table: SizeTable, compressionType: 0 | 1, plain: boolean): Generator<Buffer> {
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
  yield* l2Tables(layout, used, table, plain);
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
function* refcountBlocks(layout: Layout, used: readonly Extent[], table: SizeTable): Generator<Buffer> {
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

/** One L2 table per planned L1 index (some may stay empty: all their clusters were zero). */
function* l2Tables(layout: Layout, used: readonly Extent[], table: SizeTable, plain: boolean): Generator<Buffer> {
  const clusters = storedClusters(used, table, layout.dataOffset);
  let next = clusters.next();
  for (const l1i of layout.l2Offsets.keys()) {
    const b = Buffer.alloc(CLUSTER_SIZE);
    while (!next.done && Math.floor(next.value.guest / L2_ENTRIES) === l1i) {
      const c = next.value;
      b.writeBigUInt64BE(plain ? plainEntry(c.offset) : compressedEntry(c.offset, c.size), (c.guest % L2_ENTRIES) * 8);
      next = clusters.next();
    }
    yield b;
  }
}
