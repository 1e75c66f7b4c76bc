// A sink that streams the image into an existing (queued) Glance image: the bytes become the
// body of one chunked PUT /v2/images/{id}/file as they are produced. Nothing is stored locally;
// at most HIGH_WATER bytes wait in memory for the connection.
import type { GlanceClient } from './client.js';
import type { Sink } from '../sink/sink.js';

const HIGH_WATER = 16 << 20;
const MAX_CHUNK = 8 << 20;

export class GlanceSink implements Sink {
  readonly description: string;
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private closed = false;
  private wakeBody: (() => void) | undefined;
  private wakeWriter: (() => void) | undefined;
  private readonly controller = new AbortController();
  private readonly upload: Promise<void>;
  private failure: Error | undefined;

  constructor(private readonly client: GlanceClient, readonly imageId: string) {
    this.description = `glance image ${imageId}`;
    this.upload = client.upload(imageId, this.body(), this.controller.signal);
    this.upload.catch((err: Error) => {
      this.failure = err;
      this.wakeWriter?.();
    });
  }

  private async *body(): AsyncGenerator<Uint8Array> {
    for (;;) {
      // Large chunks: glance-api's chunked-body parsing costs per chunk, and it is CPU-bound.
      const parts: Buffer[] = [];
      let size = 0;
      while (this.queue.length && size < MAX_CHUNK) { const b = this.queue.shift()!; parts.push(b); size += b.length; }
      const chunk = parts.length > 1 ? Buffer.concat(parts, size) : parts[0];
      if (chunk) {
        this.queued -= chunk.length;
        if (this.queued <= HIGH_WATER / 2) { this.wakeWriter?.(); this.wakeWriter = undefined; }
        yield chunk;
      } else if (this.closed) {
        return;
      } else {
        await new Promise<void>((resolve) => { this.wakeBody = resolve; });
      }
    }
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    this.queue.push(Buffer.from(chunk)); // a copy: the caller reuses its buffer
    this.queued += chunk.length;
    this.wakeBody?.();
    this.wakeBody = undefined;
    while (this.queued > HIGH_WATER && !this.failure) await new Promise<void>((resolve) => { this.wakeWriter = resolve; });
    if (this.failure) throw this.failure;
  }

  async finish(): Promise<void> {
    this.closed = true;
    this.wakeBody?.();
    await this.upload;
  }

  async abort(): Promise<void> {
    this.closed = true;
    this.controller.abort();
    this.wakeBody?.();
    await this.upload.catch(() => {});
  }
}

