// Hashing thread for Hasher: one digest algorithm over the chunks it is sent, in order. Each
// buffer goes back to the sender once hashed, for reuse.
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

const { algorithm, file } = workerData as { algorithm: string; file?: string };
const hash = createHash(algorithm);

if (file) {
  // Hash a whole file by reading it here: no copies through the main thread.
  const fd = openSync(file, 'r');
  const buf = Buffer.allocUnsafe(4 << 20);
  let size = 0;
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, size)) > 0; size += n) hash.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  parentPort!.postMessage({ digest: hash.digest('hex'), size });
}

parentPort!.on('message', (msg: { buf: ArrayBuffer; len: number } | 'end') => {
  if (msg === 'end') {
    parentPort!.postMessage({ digest: hash.digest('hex') });
    return;
  }
  hash.update(new Uint8Array(msg.buf, 0, msg.len));
  parentPort!.postMessage(msg.buf, [msg.buf]);
});
