// Hashing thread for Hasher: one digest algorithm over the chunks it is sent, in order. Each
// buffer goes back to the sender once hashed, for reuse.
import { createHash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';

const hash = createHash(workerData as string);

parentPort!.on('message', (msg: { buf: ArrayBuffer; len: number } | 'end') => {
  if (msg === 'end') {
    parentPort!.postMessage({ digest: hash.digest('hex') });
    return;
  }
  hash.update(new Uint8Array(msg.buf, 0, msg.len));
  parentPort!.postMessage(msg.buf, [msg.buf]);
});
