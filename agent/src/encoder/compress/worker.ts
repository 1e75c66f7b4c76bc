// Compression worker: turns batches of clusters into size codes (sizing pass) or payloads
// (writing). A pure function of its input, so the passes agree byte for byte.
import { parentPort, workerData } from 'node:worker_threads';
import { createCodec } from './codecs.js';
import { STORED, type CompressJob, type CompressResult, type WorkerConfig } from './protocol.js';

const config = workerData as WorkerConfig;
const codec = createCodec(config.codec, config.level, config.clusterSize);
const C = config.clusterSize;
const zero = Buffer.alloc(C);

/** Size code and frame of one cluster; code -1 = "known zero but is not zero any more". */
function encodeCluster(cluster: Buffer, known: number | undefined): { code: number; frame?: Buffer } {
  const isZero = cluster.equals(zero);
  if (known === 0) return isZero ? { code: 0 } : { code: -1 };
  if (isZero) return { code: 0 };
  if (known === STORED || codec.name === 'none') return { code: STORED, frame: codec.store(cluster) };
  const frame = codec.compress(cluster);
  // A frame that does not shrink (or would collide with the STORED code) is stored instead.
  if (frame.length >= Math.min(C, STORED)) return { code: STORED, frame: codec.store(cluster) };
  return { code: frame.length, frame };
}

parentPort!.on('message', (job: CompressJob) => {
  const data = Buffer.from(job.data);
  const out = job.out ? Buffer.from(job.out) : undefined;
  const codes = new Uint16Array(job.clusters);
  let outLength = 0;
  for (let i = 0; i < job.clusters; i++) {
    const { code, frame } = encodeCluster(data.subarray(i * C, (i + 1) * C), job.known?.[i]);
    // -1 cannot be a Uint16 code; 1 never matches a zero cluster's 0, so the encoder sees a change.
    codes[i] = code < 0 ? 1 : code;
    if (out && frame) outLength += frame.copy(out, outLength);
  }
  const result: CompressResult = { id: job.id, codes, data: job.data, outLength, ...(job.out ? { out: job.out } : {}) };
  parentPort!.postMessage(result, [codes.buffer as ArrayBuffer, job.data, ...(job.out ? [job.out] : [])]);
});
