// Reads an image front to back from a stream (a Glance download, a file): exact reads, forward
// skips, nothing kept behind. Every byte that passes is hashed, so once the stream has been read
// to its end the whole image can be checked against the digest its store recorded.
import { createHash, type Hash } from 'node:crypto';
import { ChainError } from '../incremental/errors.js';

export class SequentialReader {
  private readonly it: AsyncIterator<Uint8Array>;
  private pending: Buffer = Buffer.alloc(0);
  private pos = 0;
  private readonly sha512: Hash = createHash('sha512');

  /** WHAT names the image in errors ("image 1234…", "file base.qcow2"). */
  constructor(source: AsyncIterable<Uint8Array>, readonly what: string) {
    this.it = source[Symbol.asyncIterator]();
  }

  get position(): number { return this.pos; }

  /** The next N bytes; ChainError if the image ends first. */
  async read(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      if (!this.pending.length && !(await this.fill())) {
        throw new ChainError(`${this.what} ends at byte ${this.pos}, ${need} bytes short of what its own tables point at (truncated?)`);
      }
      const take = this.pending.subarray(0, need);
      this.pending = this.pending.subarray(take.length);
      parts.push(take);
      need -= take.length;
      this.pos += take.length;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** Moves forward to byte OFFSET (never back: these images are read in one pass). */
  async skipTo(offset: number): Promise<void> {
    if (offset < this.pos) throw new ChainError(`${this.what} is not laid out front to back (byte ${offset} is needed after byte ${this.pos}); only images bmsnap wrote can be read as a stream`);
    while (this.pos < offset) {
      if (!this.pending.length && !(await this.fill())) throw new ChainError(`${this.what} ends at byte ${this.pos}, before byte ${offset} its tables point at (truncated?)`);
      const step = Math.min(this.pending.length, offset - this.pos);
      this.pending = this.pending.subarray(step);
      this.pos += step;
    }
  }

  /** Reads to the end; the SHA-512 of everything and the total size. */
  async drain(): Promise<{ size: number; sha512: string }> {
    this.pos += this.pending.length;
    this.pending = Buffer.alloc(0);
    while (await this.fill()) {
      this.pos += this.pending.length;
      this.pending = Buffer.alloc(0);
    }
    return { size: this.pos, sha512: this.sha512.digest('hex') };
  }

  /** Stops reading (on failure): releases the underlying stream. */
  async close(): Promise<void> {
    await this.it.return?.().catch(() => undefined);
  }

  private async fill(): Promise<boolean> {
    const next = await this.it.next();
    if (next.done) return false;
    const chunk = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
    this.sha512.update(chunk);
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    return true;
  }
}
