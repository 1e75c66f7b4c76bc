// Disk -> raw image of the same size: used ranges copied, everything else zeros. One pass.
import type { DiskMap } from '../map/build-map.js';
import type { ByteReader } from '../source/byte-reader.js';
import type { Sink } from '../sink/sink.js';
import { readBatch } from './batch-reader.js';
import { planBatches } from './cluster-plan.js';
import { pipelineInOrder } from './ordered.js';
import { noProgress, type Progress } from './progress.js';

const CHUNK = 1 << 20;
const ZEROS = Buffer.alloc(CHUNK);

export async function encodeRaw(src: ByteReader, map: DiskMap, sink: Sink, progress: Progress = noProgress, signal?: AbortSignal): Promise<void> {
  let pos = 0;
  const zerosUntil = async (end: number) => {
    while (pos < end) {
      const n = Math.min(CHUNK, end - pos);
      await sink.write(n === CHUNK ? ZEROS : ZEROS.subarray(0, n));
      pos += n;
    }
  };
  progress.phase('writing', map.usedBytes);
  await pipelineInOrder(planBatches(map.used, CHUNK, 1), 4, (b) => readBatch(src, b, CHUNK), async (buf, b) => {
    await zerosUntil(b.firstCluster * CHUNK);
    const data = buf.subarray(0, Math.min(buf.length, map.size - pos));
    await sink.write(data);
    pos += data.length;
    progress.advance(b.used.reduce((n, e) => n + e.length, 0));
  }, signal);
  await zerosUntil(map.size);
}
