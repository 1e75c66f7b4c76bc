// Turns the used-block map into batches of consecutive guest clusters that hold at least one
// used byte. Both encoder passes walk the same batches, so the k-th mapped cluster is the same
// cluster in both.
import type { Extent } from '../map/extents.js';

export interface Batch {
  firstCluster: number;
  clusters: number;
  /** Used byte ranges inside the batch (absolute disk offsets). */
  used: Extent[];
}

export function* planBatches(used: readonly Extent[], clusterSize: number, maxClusters: number): Generator<Batch> {
  let cur: Batch | undefined;
  for (const e of used) {
    let off = e.offset;
    const end = e.offset + e.length;
    while (off < end) {
      const c = Math.floor(off / clusterSize);
      if (!cur || c > cur.firstCluster + cur.clusters || c >= cur.firstCluster + maxClusters) {
        if (cur) yield cur;
        cur = { firstCluster: c, clusters: 0, used: [] };
      }
      const pieceEnd = Math.min(end, (cur.firstCluster + maxClusters) * clusterSize);
      cur.used.push({ offset: off, length: pieceEnd - off });
      cur.clusters = Math.max(cur.clusters, Math.ceil(pieceEnd / clusterSize) - cur.firstCluster);
      off = pieceEnd;
    }
  }
  if (cur) yield cur;
}

/** Guest cluster index of every mapped cluster, in order. */
export function* mappedClusters(used: readonly Extent[], clusterSize: number): Generator<number> {
  for (const b of planBatches(used, clusterSize, 1 << 20)) {
    for (let i = 0; i < b.clusters; i++) yield b.firstCluster + i;
  }
}

export function countMappedClusters(used: readonly Extent[], clusterSize: number): number {
  let n = 0;
  for (const b of planBatches(used, clusterSize, 1 << 20)) n += b.clusters;
  return n;
}
