// Writes the image to a file. The bytes go to a hidden temporary file beside the target, which
// is renamed over the target only when the image is complete: a failed run leaves nothing that
// looks like a finished image.
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { OutputError } from '../errors.js';
import { errnoText } from '../source/open-source.js';
import type { SeekableSink } from './sink.js';

export class FileSink implements SeekableSink {
  readonly description: string;
  private position = 0;

  get partialPath(): string { return this.temp; }

  private constructor(private readonly target: string, private readonly temp: string, private fh: FileHandle | undefined) {
    this.description = `file ${target}`;
  }

  static async create(target: string): Promise<FileSink> {
    const temp = join(dirname(target), `.${basename(target)}.bmsnap-${process.pid}.partial`);
    try {
      return new FileSink(target, temp, await open(temp, 'wx+', 0o644));
    } catch (err) {
      throw new OutputError(`cannot create ${target}: ${errnoText(err)}`, { cause: err });
    }
  }

  async write(chunk: Buffer): Promise<void> {
    await this.writeAt(chunk, this.position);
    this.position += chunk.length;
  }

  async writeAt(chunk: Buffer, position: number): Promise<void> {
    let done = 0;
    try {
      while (done < chunk.length) done += (await this.fh!.write(chunk, done, chunk.length - done, position + done)).bytesWritten;
    } catch (err) {
      throw new OutputError(`cannot write ${this.target}: ${errnoText(err)}`, { cause: err });
    }
  }

  async finish(): Promise<void> {
    try {
      // No fsync: like cp and qemu-img, durability is left to the filesystem's writeback.
      await this.fh!.close();
      this.fh = undefined;
      await rename(this.temp, this.target);
    } catch (err) {
      await this.abort();
      throw new OutputError(`cannot complete ${this.target}: ${errnoText(err)}`, { cause: err });
    }
  }

  async abort(): Promise<void> {
    await this.fh?.close().catch(() => {});
    this.fh = undefined;
    await unlink(this.temp).catch(() => {});
  }
}
