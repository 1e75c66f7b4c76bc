// A sink wrapper that hashes what passes through it, in order, after each write.
import { Hasher, type Digests } from './hasher.js';
import type { Sink } from './sink.js';

export class HashingSink implements Sink {
  private readonly hasher = new Hasher();

  constructor(private readonly inner: Sink) {}

  get description(): string { return this.inner.description; }

  async write(chunk: Buffer): Promise<void> {
    await this.inner.write(chunk);
    await this.hasher.update(chunk);
  }

  finish(): Promise<void> { return this.inner.finish(); }

  async abort(): Promise<void> {
    await this.hasher.close();
    await this.inner.abort();
  }

  digests(): Promise<Digests> { return this.hasher.digest(); }
}
