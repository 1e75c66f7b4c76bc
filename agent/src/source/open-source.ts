// Opens the source disk (block device or raw image file) strictly read-only. The source is
// never opened with a write flag anywhere in bmsnap: this module is the only place that opens it.
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { SourceError } from '../errors.js';
import type { ByteReader } from './byte-reader.js';

export interface Source extends ByteReader {
  readonly path: string;
  readonly kind: 'block-device' | 'file';
  /** Logical sector size (512 for files; the device's for block devices). */
  readonly sectorSize: number;
  close(): Promise<void>;
}

export async function openSource(path: string): Promise<Source> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new SourceError(`cannot open source ${path}: ${errnoText(err)}`, { cause: err });
  }
  try {
    const { kind, size, sectorSize } = await describeDisk(fh, path);
    if (!Number.isSafeInteger(size) || size <= 0) throw new SourceError(`source ${path} is empty`);
    return new FileSource(path, fh, size, kind, sectorSize);
  } catch (err) {
    await fh.close().catch(() => {});
    if (err instanceof SourceError) throw err;
    throw new SourceError(`cannot inspect source ${path}: ${errnoText(err)}`, { cause: err });
  }
}

/** What an open disk (block device or regular file) is: its kind, size and logical sector size. */
export async function describeDisk(fh: FileHandle, path: string): Promise<{ kind: Source['kind']; size: number; sectorSize: number }> {
  const st = await fh.stat();
  if (st.isBlockDevice()) {
    const sys = `/sys/dev/block/${devMajMin(st.rdev)}`;
    const size = Number((await readFile(`${sys}/size`, 'utf8')).trim()) * 512;
    const sectorSize = await readFile(`${sys}/queue/logical_block_size`, 'utf8')
      .then((s) => Number(s.trim()))
      // partitions have no queue/ of their own
      .catch(() => 512);
    return { kind: 'block-device', size, sectorSize };
  }
  if (st.isFile()) return { kind: 'file', size: st.size, sectorSize: 512 };
  throw new SourceError(`${path} is neither a block device nor a regular file`);
}

class FileSource implements Source {
  constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly size: number,
    readonly kind: Source['kind'],
    readonly sectorSize: number,
  ) {}

  async readExact(buf: Uint8Array, position: number): Promise<void> {
    if (position < 0 || position + buf.length > this.size) {
      throw new SourceError(`read past the end of ${this.path} at byte ${position}`);
    }
    let done = 0;
    while (done < buf.length) {
      let n: number;
      try {
        ({ bytesRead: n } = await this.fh.read(buf, done, buf.length - done, position + done));
      } catch (err) {
        throw new SourceError(`read error on ${this.path} at byte ${position + done}: ${errnoText(err)}`, { cause: err });
      }
      if (n === 0) throw new SourceError(`${this.path} ended early at byte ${position + done} (it shrank while being read?)`);
      done += n;
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/** "MAJ:MIN" of a device number (as /sys/dev/block and /proc/self/mountinfo write it). */
export function devMajMin(dev: number): string {
  return `${major(dev)}:${minor(dev)}`;
}

// Linux dev_t encoding (glibc's gnu_dev_major/minor).
function major(dev: number): number {
  return ((dev >>> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
}
function minor(dev: number): number {
  return (dev & 0xff) | ((dev >>> 12) & ~0xff);
}

export function errnoText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string') {
    const text: Record<string, string> = {
      ENOENT: 'no such file or directory',
      EACCES: 'permission denied',
      EPERM: 'operation not permitted',
      EISDIR: 'is a directory',
      EIO: 'input/output error',
      ENXIO: 'no such device',
      EBUSY: 'device busy',
    };
    return text[e.code] ?? e.code;
  }
  return e instanceof Error ? e.message : String(err);
}
