// A source assembled from several readers: the disk, with some byte ranges read from elsewhere
// instead. Live capture uses it to present the disk as it was at the freeze: the ranges that
// hold a snapshotted volume come from the device-mapper snapshot, the rest from the disk itself.
import { SourceError } from '../errors.js';
import type { ByteReader } from './byte-reader.js';
import type { Source } from './open-source.js';

export interface Overlay {
  /** Byte range on the composed source... */
  offset: number;
  length: number;
  /** ...read from READER at FROM instead. */
  reader: ByteReader;
  from: number;
}

export function composedSource(base: Source, overlays: readonly Overlay[], path: string, close: () => Promise<void>): Source {
  const sorted = [...overlays].sort((a, b) => a.offset - b.offset);
  for (const [i, o] of sorted.entries()) {
    const prev = sorted[i - 1];
    if (o.length <= 0 || o.offset < 0 || o.offset + o.length > base.size || o.from < 0 || o.from + o.length > o.reader.size) {
      throw new SourceError(`overlay [${o.offset}, +${o.length}) from ${o.from} does not fit the source or its reader`);
    }
    if (prev && prev.offset + prev.length > o.offset) throw new SourceError(`overlays at ${prev.offset} and ${o.offset} overlap`);
  }
  return {
    path,
    kind: base.kind,
    size: base.size,
    sectorSize: base.sectorSize,
    close,
    async readExact(buf, position) {
      if (position < 0 || position + buf.length > base.size) throw new SourceError(`read past the end of ${path} at byte ${position}`);
      let pos = position;
      const end = position + buf.length;
      while (pos < end) {
        // the first overlay that ends after pos (few overlays: a linear scan is enough)
        const o = sorted.find((x) => x.offset + x.length > pos);
        const part = buf.subarray(pos - position, (o ? Math.min(end, o.offset > pos ? o.offset : o.offset + o.length) : end) - position);
        if (o && o.offset <= pos) await o.reader.readExact(part, o.from + (pos - o.offset));
        else await base.readExact(part, pos);
        pos += part.length;
      }
    },
  };
}
