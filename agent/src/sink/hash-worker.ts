// Hashing thread for Hasher: one digest algorithm over the chunks it is sent, in order;
// acknowledges each chunk's size so the sender can bound what is in flight.
import { createHash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';

const hash = createHash(workerData as string);

parentPort!.on('message', (msg: ArrayBuffer | 'end') => {
  if (msg === 'end') {
    parentPort!.postMessage({ digest: hash.digest('hex') });
    return;
  }
  hash.update(new Uint8Array(msg));
  parentPort!.postMessage(msg.byteLength);
});
