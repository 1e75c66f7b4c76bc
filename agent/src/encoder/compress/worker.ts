// Compression worker: turns batches of clusters into size codes (sizing pass) or payloads
// (emitting pass). Pure function of its input, so both passes agree byte for byte.
import { parentPort, workerData } from 'node:worker_threads';
import { createCodec } from './codecs.js';
import { STORED, type CompressJob, type CompressResult, type WorkerConfig } from './protocol.js';

const config = workerData as WorkerConfig;
const codec = createCodec(config.codec, config.level, config.clusterSize);
const C = config.clusterSize;
const zero = Buffer.alloc(C);

parentPort!.on('message', (job: CompressJob) => {
  const data = Buffer.from(job.data);
  const codes = new Uint16Array(job.clusters);
  const parts: Buffer[] = [];
  for (let i = 0; i < job.clusters; i++) {
    const cluster = data.subarray(i * C, (i + 1) * C);
    if (cluster.equals(zero)) continue;
    let out = codec.name === 'none' ? cluster : codec.compress(cluster);
    // A frame that does not shrink (or would collide with the STORED code) is stored instead.
    if (out.length >= Math.min(C, STORED) || codec.name === 'none') {
      codes[i] = STORED;
      if (job.emit) out = codec.store(cluster);
    } else {
      codes[i] = out.length;
    }
    if (job.emit) parts.push(out);
  }
  const result: CompressResult = { id: job.id, codes };
  const transfer: ArrayBuffer[] = [codes.buffer as ArrayBuffer];
  if (job.emit) {
    const payload = Buffer.concat(parts);
    // Buffer.concat may hand back a slice of a shared pool: copy into an exact ArrayBuffer.
    const ab = payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.length) as ArrayBuffer;
    result.payload = ab;
    transfer.push(ab);
  }
  parentPort!.postMessage(result, transfer);
});
