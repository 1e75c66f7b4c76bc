// Compression worker: turns batches of clusters into size codes (sizing pass) or payloads
// (writing pass). A pure function of its input, so both passes agree byte for byte.
import { parentPort, workerData } from 'node:worker_threads';
import { createCodec } from './codecs.js';
import { STORED, type CompressJob, type CompressResult, type WorkerConfig } from './protocol.js';

const config = workerData as WorkerConfig;
const codec = createCodec(config.codec, config.level, config.clusterSize);
const C = config.clusterSize;
const zero = Buffer.alloc(C);

function encodeCluster(cluster: Buffer, known: number | undefined): { code: number; out?: Buffer } {
  if (known === 0 || (known === undefined && cluster.equals(zero))) {
    // In the writing pass a cluster that was zero must still be zero: the encoder checks codes.
    return known === 0 && !cluster.equals(zero) ? { code: -1 } : { code: 0 };
  }
  if (known === STORED || codec.name === 'none') return { code: STORED, out: codec.store(cluster) };
  const out = codec.compress(cluster);
  // A frame that does not shrink (or would collide with the STORED code) is stored instead.
  if (out.length >= Math.min(C, STORED)) return { code: STORED, out: codec.store(cluster) };
  return { code: out.length, out };
}

parentPort!.on('message', (job: CompressJob) => {
  const data = Buffer.from(job.data);
  const codes = new Uint16Array(job.clusters);
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = 0; i < job.clusters; i++) {
    const { code, out } = encodeCluster(data.subarray(i * C, (i + 1) * C), job.known?.[i]);
    // -1 (a zero cluster that is no longer zero) cannot be a Uint16: report it as a mismatch.
    codes[i] = code < 0 ? 1 : code;
    if (job.emit && out && code > 0) { parts.push(out); total += out.length; }
  }
  const result: CompressResult = { id: job.id, codes, data: job.data };
  const transfer: ArrayBuffer[] = [codes.buffer as ArrayBuffer, job.data];
  if (job.emit) {
    const payload = new ArrayBuffer(total);
    const view = new Uint8Array(payload);
    let off = 0;
    for (const p of parts) { view.set(p, off); off += p.length; }
    result.payload = payload;
    transfer.push(payload);
  }
  parentPort!.postMessage(result, transfer);
});
