// Reads one batch of clusters from the source: only the used ranges (nearby ones coalesced into
// one read), everything else in the batch left as zeros - that is where stale free-space data
// disappears.
import type { ByteReader } from '../source/byte-reader.js';
import type { Batch } from './cluster-plan.js';

/** Reads this close together are merged into one read; the gap is zeroed afterwards. */
const COALESCE_GAP = 256 * 1024;

/** Fills `target` (at least batch.clusters * clusterSize bytes) with the batch's content. */
export async function readBatch(src: ByteReader, batch: Batch, clusterSize: number, target?: Buffer): Promise<Buffer> {
  const base = batch.firstCluster * clusterSize;
  const length = batch.clusters * clusterSize;
  const buf = target ? target.subarray(0, length).fill(0) : Buffer.alloc(length);
  let i = 0;
  while (i < batch.used.length) {
    const first = batch.used[i]!;
    let j = i;
    while (j + 1 < batch.used.length && batch.used[j + 1]!.offset - (batch.used[j]!.offset + batch.used[j]!.length) <= COALESCE_GAP) j++;
    const last = batch.used[j]!;
    const start = first.offset;
    const end = last.offset + last.length;
    await src.readExact(buf.subarray(start - base, end - base), start);
    // Re-zero the gaps that were read only to save syscalls.
    for (let k = i; k < j; k++) {
      const a = batch.used[k]!;
      buf.fill(0, a.offset + a.length - base, batch.used[k + 1]!.offset - base);
    }
    i = j + 1;
  }
  return buf;
}
