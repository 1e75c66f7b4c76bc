// md5 + sha512 + size of a byte stream (the digests Glance reports as checksum, os_hash_value
// and size). Each digest runs on its own thread, so hashing keeps up with compression instead
// of serialising behind it. Chunks are copied into a small set of buffers that cycle between
// this thread and the hashing threads, so memory stays flat.
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';

export interface Digests { size: number; md5: string; sha512: string }

const SLOT = 4 << 20;
const SLOTS = 4;
type Reply = ArrayBuffer | { digest: string };

class DigestThread {
  private readonly worker: Worker;
  private readonly free: ArrayBuffer[] = [];
  private created = 0;
  private waiter: (() => void) | undefined;

  constructor(algorithm: string) {
    this.worker = new Worker(new URL('./hash-worker.js', import.meta.url), { workerData: { algorithm } });
    this.worker.on('message', (m: Reply) => {
      if (!(m instanceof ArrayBuffer)) return;
      this.free.push(m);
      this.waiter?.();
      this.waiter = undefined;
    });
  }

  async update(chunk: Uint8Array): Promise<void> {
    for (let off = 0; off < chunk.length; off += SLOT) {
      const part = chunk.subarray(off, off + SLOT);
      const buf = await this.slot();
      new Uint8Array(buf).set(part);
      this.worker.postMessage({ buf, len: part.length }, [buf]);
    }
  }

  private async slot(): Promise<ArrayBuffer> {
    while (!this.free.length && this.created >= SLOTS) await new Promise<void>((resolve) => { this.waiter = resolve; });
    if (this.free.length) return this.free.pop()!;
    this.created++;
    return new ArrayBuffer(SLOT);
  }

  async digest(): Promise<string> {
    this.worker.postMessage('end');
    for (;;) {
      const [m] = (await once(this.worker, 'message')) as [Reply];
      if (!(m instanceof ArrayBuffer)) return m.digest;
    }
  }

  close(): Promise<number> { return this.worker.terminate(); }
}

export class Hasher {
  private readonly md5 = new DigestThread('md5');
  private readonly sha512 = new DigestThread('sha512');
  private size = 0;

  async update(chunk: Uint8Array): Promise<void> {
    if (chunk.length === 0) return;
    this.size += chunk.length;
    await Promise.all([this.md5.update(chunk), this.sha512.update(chunk)]);
  }

  /** The digests of everything passed to update(); the threads end with it. */
  async digest(): Promise<Digests> {
    const [md5, sha512] = await Promise.all([this.md5.digest(), this.sha512.digest()]);
    await this.close();
    return { size: this.size, md5, sha512 };
  }

  async close(): Promise<void> {
    await Promise.all([this.md5.close(), this.sha512.close()]);
  }
}

/** md5 + sha512 of a whole file, each computed by its own thread reading the file itself. */
export async function hashFile(path: string): Promise<Digests> {
  const one = (algorithm: string) => new Promise<{ digest: string; size: number }>((resolve, reject) => {
    const w = new Worker(new URL('./hash-worker.js', import.meta.url), { workerData: { algorithm, file: path } });
    w.once('message', (m: { digest: string; size: number }) => { resolve(m); void w.terminate(); });
    w.once('error', reject);
  });
  const [md5, sha512] = await Promise.all([one('md5'), one('sha512')]);
  return { size: md5.size, md5: md5.digest, sha512: sha512.digest };
}
