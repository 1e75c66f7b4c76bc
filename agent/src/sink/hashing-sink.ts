// Computes, while the bytes pass through, the digests Glance will report for the image:
// md5 ("checksum") and sha512 ("os_hash_value"), plus the byte count ("size").
import { createHash, type Hash } from 'node:crypto';
import type { Sink } from './sink.js';

export interface Digests { size: number; md5: string; sha512: string }

export class HashingSink implements Sink {
  private readonly md5: Hash = createHash('md5');
  private readonly sha512: Hash = createHash('sha512');
  private size = 0;

  constructor(private readonly inner: Sink) {}

  get description(): string { return this.inner.description; }
  get bytesWritten(): number { return this.size; }

  async write(chunk: Buffer): Promise<void> {
    this.md5.update(chunk);
    this.sha512.update(chunk);
    this.size += chunk.length;
    await this.inner.write(chunk);
  }

  finish(): Promise<void> { return this.inner.finish(); }
  abort(): Promise<void> { return this.inner.abort(); }

  digests(): Digests {
    return { size: this.size, md5: this.md5.digest('hex'), sha512: this.sha512.digest('hex') };
  }
}
