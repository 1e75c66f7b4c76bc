// Writes the image to standard output (a pipe into curl, ssh, another tool), with backpressure.
import { OutputError } from '../errors.js';
import type { Sink } from './sink.js';

export class StdoutSink implements Sink {
  readonly description = 'stdout';
  private error: Error | undefined;
  private readonly failed: Promise<void>;

  constructor(private readonly out: NodeJS.WriteStream = process.stdout) {
    this.failed = new Promise((resolve) => out.once('error', (e) => { this.error = e; resolve(); }));
  }

  async write(chunk: Buffer): Promise<void> {
    this.check();
    // Wait for the write callback, not just 'drain': the caller reuses `chunk` afterwards.
    await Promise.race([new Promise<void>((resolve) => this.out.write(chunk, () => resolve())), this.failed]);
    this.check();
  }

  async finish(): Promise<void> {
    await new Promise<void>((resolve) => this.out.write('', () => resolve()));
    this.check();
  }

  async abort(): Promise<void> {
    // Bytes already sent cannot be taken back; the non-zero exit status tells the reader.
  }

  private check(): void {
    if (this.error) {
      const code = (this.error as NodeJS.ErrnoException).code;
      throw new OutputError(code === 'EPIPE' ? 'stdout closed by the reader before the image was complete' : `cannot write to stdout: ${this.error.message}`);
    }
  }
}
