// Random-access, read-only view of bytes: the whole source disk, or one partition of it.
// Filesystem probes and the encoder only ever see this interface.
import { SourceError } from '../errors.js';

export interface ByteReader {
  /** Size in bytes. */
  readonly size: number;
  /** Fills `buf` from `position`; throws SourceError on an I/O error or a read past the end. */
  readExact(buf: Uint8Array, position: number): Promise<void>;
}

/** Reads `length` bytes at `position` into a new Buffer. */
export async function readBytes(r: ByteReader, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await r.readExact(buf, position);
  return buf;
}

/** A window [base, base + size) of another reader, addressed from 0. */
export function subReader(parent: ByteReader, base: number, size: number, label = 'partition'): ByteReader {
  if (base < 0 || size < 0 || base + size > parent.size) {
    throw new SourceError(`${label} [${base}, ${base + size}) lies outside the source (${parent.size} bytes)`);
  }
  return {
    size,
    async readExact(buf, position) {
      if (position < 0 || position + buf.length > size) {
        throw new SourceError(`read past the end of the ${label} at byte ${position} (+${buf.length}, size ${size})`);
      }
      await parent.readExact(buf, base + position);
    },
  };
}

/** An in-memory reader (used by probes on already-read metadata and by tests of pure parsing). */
export function bufferReader(data: Uint8Array): ByteReader {
  return {
    size: data.length,
    async readExact(buf, position) {
      if (position < 0 || position + buf.length > data.length) {
        throw new SourceError(`read past the end at byte ${position} (+${buf.length}, size ${data.length})`);
      }
      buf.set(data.subarray(position, position + buf.length));
    },
  };
}
