// What a delta carries: the parent's cluster index against this disk's. A cluster goes into the
// delta when its digest differs or the parent does not map it; a cluster the parent maps and this
// disk no longer does becomes a zero cluster in the delta (an unallocated one would show the
// parent's old bytes through). Everything else is left to the parent.
import { subtract, type Extent } from '../map/extents.js';
import { DIGEST_BYTES, IndexCursor, type ClusterIndex, type ClusterRun } from './cluster-index.js';
import { ParentMismatchError } from './errors.js';

export interface DeltaPlan {
  /** Written in the delta (new or different content). */
  changed: ClusterRun[];
  /** Zero clusters in the delta (mapped in the parent, not any more). */
  dropped: ClusterRun[];
  changedClusters: number;
  droppedClusters: number;
  /** Left to the parent. */
  unchangedClusters: number;
}

/** ParentMismatchError unless a delta of a disk of this shape can go on PARENT (checked before any reading). */
export function checkParentShape(parent: ClusterIndex, clusterSize: number, virtualSize: number): void {
  if (parent.clusterSize !== clusterSize) {
    throw new ParentMismatchError(`the parent's clusters are ${parent.clusterSize} bytes, this image's ${clusterSize}: no delta between them`);
  }
  if (parent.virtualSize !== virtualSize) {
    throw new ParentMismatchError(`the parent is a ${parent.virtualSize}-byte disk and this one ${virtualSize} bytes: a delta needs the same disk size`);
  }
}

export function planDelta(parent: ClusterIndex, current: ClusterIndex): DeltaPlan {
  checkParentShape(parent, current.clusterSize, current.virtualSize);
  const changed = new RunList();
  const dropped = new RunList();
  let unchanged = 0;
  const p = new IndexCursor(parent);
  const c = new IndexCursor(current);
  while (!p.done || !c.done) {
    if (c.done || (!p.done && p.cluster < c.cluster)) {
      dropped.add(p.cluster);
      p.next();
    } else if (p.done || c.cluster < p.cluster) {
      changed.add(c.cluster);
      c.next();
    } else {
      if (parent.digests.compare(current.digests, c.ordinal * DIGEST_BYTES, (c.ordinal + 1) * DIGEST_BYTES, p.ordinal * DIGEST_BYTES, (p.ordinal + 1) * DIGEST_BYTES) === 0) unchanged++;
      else changed.add(c.cluster);
      p.next();
      c.next();
    }
  }
  return { changed: changed.runs, dropped: dropped.runs, changedClusters: changed.total, droppedClusters: dropped.total, unchangedClusters: unchanged };
}

/** Byte extents of RUNS of CLUSTERSIZE-byte clusters. */
export function runExtents(runs: readonly ClusterRun[], clusterSize: number): Extent[] {
  return runs.map((r) => ({ offset: r.first * clusterSize, length: r.count * clusterSize }));
}

/** The part of USED (a disk's used-byte map) inside the changed clusters: what the delta reads. */
export function deltaUsed(used: readonly Extent[], plan: DeltaPlan, clusterSize: number): Extent[] {
  return subtract(used, subtract(used, runExtents(plan.changed, clusterSize)));
}

/** Clusters added in increasing order, kept as maximal runs. */
class RunList {
  readonly runs: ClusterRun[] = [];
  total = 0;
  add(cluster: number): void {
    const last = this.runs[this.runs.length - 1];
    if (last && last.first + last.count === cluster) last.count++;
    else this.runs.push({ first: cluster, count: 1 });
    this.total++;
  }
}
