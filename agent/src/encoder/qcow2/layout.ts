// Where everything goes in the output file:
//   header | L1 | refcount table | refcount blocks | L2 tables | packed cluster data | pad
// The metadata area depends only on the used-block map (an L2 table for every 512 MiB range
// holding a mapped cluster; refcount blocks for the largest file the map could produce), so a
// streamed image and a seekable one come out byte-identical. Only the data offsets depend on
// compressed sizes, which the size table records.
import { mappedClusters } from '../cluster-plan.js';
import type { Extent } from '../../map/extents.js';
import { STORED } from '../compress/protocol.js';
import { CLUSTER_SIZE, L2_ENTRIES, REFCOUNTS_PER_BLOCK } from './format.js';
import type { ClusterRun } from '../../incremental/cluster-index.js';

export interface SizeTable<Codes extends ArrayLike<number> = Uint16Array> {
  /**
   * Per mapped cluster: 0 = zero (not stored), STORED = stored frame, else compressed length.
   * (Frames copied from other images - chain/flatten.ts - have their lengths here as they are,
   * with storedSize = STORED so that sizeOf() returns every code unchanged.)
   */
  codes: Codes;
  storedSize: number;
}

export type AnySizeTable = SizeTable<ArrayLike<number>>;

export interface StoredCluster {
  guest: number;
  offset: number;
  size: number;
}

export interface Layout {
  virtualSize: number;
  l1Size: number;
  l1Offset: number;
  refTableOffset: number;
  refTableClusters: number;
  refBlocksOffset: number;
  refBlockCount: number;
  /** L1 index -> host offset of its L2 table, in ascending L1 order. */
  l2Offsets: Map<number, number>;
  dataOffset: number;
  metadataClusters: number;
}

const clustersFor = (bytes: number) => Math.ceil(bytes / CLUSTER_SIZE);

export function sizeOf(code: number, table: AnySizeTable): number {
  return code === STORED ? table.storedSize : code;
}

/** The non-zero clusters in file order, with their host offsets. */
export function* storedClusters(used: readonly Extent[], table: AnySizeTable, dataOffset: number): Generator<StoredCluster> {
  let k = 0;
  let offset = dataOffset;
  for (const guest of mappedClusters(used, CLUSTER_SIZE)) {
    const code = table.codes[k++]!;
    if (code === 0) continue;
    const size = sizeOf(code, table);
    yield { guest, offset, size };
    offset += size;
  }
}

/** ZERORUNS (a delta's explicit zero clusters) need L2 tables too, but no data. */
export function planLayout(virtualSize: number, used: readonly Extent[], storedSize: number, zeroRuns: readonly ClusterRun[] = []): Layout {
  const l1Size = Math.max(1, Math.ceil(clustersFor(virtualSize) / L2_ENTRIES));
  const l1Clusters = clustersFor(l1Size * 8);
  const tables = new Set<number>();
  let mapped = 0;
  for (const guest of mappedClusters(used, CLUSTER_SIZE)) {
    tables.add(Math.floor(guest / L2_ENTRIES));
    mapped++;
  }
  for (const r of zeroRuns) {
    for (let l1i = Math.floor(r.first / L2_ENTRIES); l1i <= Math.floor((r.first + r.count - 1) / L2_ENTRIES); l1i++) tables.add(l1i);
  }
  const l2Indexes = [...tables].sort((a, b) => a - b);
  const maxDataClusters = clustersFor(mapped * storedSize);
  // Refcount structures must count themselves: iterate to a fixed point.
  let refBlocks = 1;
  let refTableClusters = 1;
  for (;;) {
    const total = 1 + l1Clusters + refTableClusters + refBlocks + l2Indexes.length + maxDataClusters;
    const needBlocks = Math.ceil(total / REFCOUNTS_PER_BLOCK);
    const needTable = clustersFor(needBlocks * 8);
    if (needBlocks === refBlocks && needTable === refTableClusters) break;
    refBlocks = Math.max(refBlocks, needBlocks);
    refTableClusters = Math.max(refTableClusters, needTable);
  }
  const l1Offset = CLUSTER_SIZE;
  const refTableOffset = l1Offset + l1Clusters * CLUSTER_SIZE;
  const refBlocksOffset = refTableOffset + refTableClusters * CLUSTER_SIZE;
  const l2Base = refBlocksOffset + refBlocks * CLUSTER_SIZE;
  const l2Offsets = new Map(l2Indexes.map((l1i, n) => [l1i, l2Base + n * CLUSTER_SIZE]));
  const dataOffset = l2Base + l2Indexes.length * CLUSTER_SIZE;
  return {
    virtualSize, l1Size, l1Offset, refTableOffset, refTableClusters, refBlocksOffset,
    refBlockCount: refBlocks, l2Offsets, dataOffset, metadataClusters: dataOffset / CLUSTER_SIZE,
  };
}

/** The file ends at the first cluster boundary after the data. */
export function fileSizeFor(layout: Layout, dataBytes: number): number {
  return layout.dataOffset + clustersFor(dataBytes) * CLUSTER_SIZE;
}
