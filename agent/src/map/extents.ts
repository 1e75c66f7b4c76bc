// Byte ranges on the source. Every map in bmsnap is a sorted list of non-overlapping,
// non-adjacent extents; these helpers keep that invariant.

export interface Extent {
  /** Byte offset (relative to whatever the list is relative to: a partition or the disk). */
  offset: number;
  /** Length in bytes, > 0. */
  length: number;
}

/** Sorts and merges overlapping or touching extents; drops empty ones. */
export function normalize(extents: Iterable<Extent>): Extent[] {
  const sorted = [...extents].filter((e) => e.length > 0).sort((a, b) => a.offset - b.offset);
  const out: Extent[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && e.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, e.offset + e.length - last.offset);
    } else {
      out.push({ offset: e.offset, length: e.length });
    }
  }
  return out;
}

/** Moves every extent by `delta` bytes. */
export function shift(extents: readonly Extent[], delta: number): Extent[] {
  return extents.map((e) => ({ offset: e.offset + delta, length: e.length }));
}

/** The parts of [0, size) not covered by `used` (which must be normalized). */
export function complement(used: readonly Extent[], size: number): Extent[] {
  const out: Extent[] = [];
  let pos = 0;
  for (const e of used) {
    if (e.offset > pos) out.push({ offset: pos, length: Math.min(e.offset, size) - pos });
    pos = Math.max(pos, e.offset + e.length);
    if (pos >= size) break;
  }
  if (pos < size) out.push({ offset: pos, length: size - pos });
  return out.filter((e) => e.length > 0);
}

/** Keeps only the parts of `extents` inside [start, start + length). */
export function clip(extents: readonly Extent[], start: number, length: number): Extent[] {
  const end = start + length;
  const out: Extent[] = [];
  for (const e of extents) {
    const s = Math.max(e.offset, start);
    const t = Math.min(e.offset + e.length, end);
    if (t > s) out.push({ offset: s, length: t - s });
  }
  return out;
}

export function totalLength(extents: readonly Extent[]): number {
  let n = 0;
  for (const e of extents) n += e.length;
  return n;
}

/**
 * Turns a bitmap (bit i set = unit i in use, least significant bit first, as ext4 and
 * partclone store them) into extents of `unitSize` bytes starting at `base`.
 */
export function bitmapToExtents(
  bitmap: Uint8Array,
  units: number,
  unitSize: number,
  base = 0,
): Extent[] {
  const out: Extent[] = [];
  let runStart = -1;
  for (let i = 0; i < units; i++) {
    const byte = bitmap[i >> 3] ?? 0;
    // Skip whole empty or full bytes quickly.
    if ((i & 7) === 0 && i + 8 <= units) {
      if (byte === 0 && runStart < 0) { i += 7; continue; }
      if (byte === 0xff && runStart >= 0) { i += 7; continue; }
    }
    const set = (byte >> (i & 7)) & 1;
    if (set && runStart < 0) runStart = i;
    else if (!set && runStart >= 0) {
      out.push({ offset: base + runStart * unitSize, length: (i - runStart) * unitSize });
      runStart = -1;
    }
  }
  if (runStart >= 0) out.push({ offset: base + runStart * unitSize, length: (units - runStart) * unitSize });
  return out;
}

/** The parts of `a` not covered by `b` (both normalized), in one linear pass over both. */
export function subtract(a: readonly Extent[], b: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  let j = 0;
  for (const e of a) {
    let start = e.offset;
    const end = e.offset + e.length;
    while (j < b.length && b[j]!.offset + b[j]!.length <= start) j++;
    for (let k = j; start < end && k < b.length && b[k]!.offset < end; k++) {
      const c = b[k]!;
      if (c.offset > start) out.push({ offset: start, length: c.offset - start });
      start = Math.max(start, c.offset + c.length);
    }
    if (start < end) out.push({ offset: start, length: end - start });
  }
  return out;
}
