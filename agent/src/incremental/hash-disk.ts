// The cluster index of a disk without encoding it: what a delta needs first, to know which
// clusters changed before it compresses any. Reads the used ranges once (a few batches ahead).
import type { DiskMap } from '../map/build-map.js';
import type { ByteReader } from '../source/byte-reader.js';
import { readBatch } from '../encoder/batch-reader.js';
import { countMappedClusters, planBatches } from '../encoder/cluster-plan.js';
import { pipelineInOrder } from '../encoder/ordered.js';
import { noProgress, type Progress } from '../encoder/progress.js';
import { ClusterIndexBuilder, type ClusterIndex } from './cluster-index.js';

const BATCH_CLUSTERS = 64;
const READ_AHEAD = 8;

export async function hashDisk(src: ByteReader, map: DiskMap, clusterSize: number, progress: Progress = noProgress, signal?: AbortSignal): Promise<ClusterIndex> {
  const index = await ClusterIndexBuilder.create(clusterSize, map.size, countMappedClusters(map.used, clusterSize));
  progress.phase('hashing', map.usedBytes);
  await pipelineInOrder(planBatches(map.used, clusterSize, BATCH_CLUSTERS), READ_AHEAD,
    async (b) => index.digest(b.clusters, await readBatch(src, b, clusterSize)),
    (digests, b) => {
      index.addDigests(b.firstCluster, b.clusters, digests);
      progress.advance(b.used.reduce((n, e) => n + e.length, 0));
    }, signal);
  return index.finish();
}
