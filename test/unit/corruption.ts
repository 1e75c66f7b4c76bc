// Seeded random metadata corruption, and the one property that matters for each damaged copy:
// whatever a mapper makes of the damaged bytes, it either refuses with a one-line BmsnapError, or
// its map still covers every byte the pristine filesystem used (the damaged bytes included).
// Bytes it leaves out must be zero in the damaged source, since the image reads zeros there. A
// crash (any other exception) or a used non-zero byte left out is a failure.
import { BmsnapError } from '../../agent/src/errors.js';
import { normalize, subtract, type Extent } from '../../agent/src/map/extents.js';
import type { ByteReader } from '../../agent/src/source/byte-reader.js';
import { patchedReader } from './fixtures-fs.js';

/** A named byte range of metadata that corruptions may hit (relative to the reader). */
export interface Target {
  name: string;
  offset: number;
  length: number;
}

export interface FuzzOptions {
  /** The pristine source. */
  base: ByteReader;
  /** What must be kept: the pristine map (its correctness is what the other tests prove). */
  reference: readonly Extent[];
  targets: readonly Target[];
  /** The mapper under test, e.g. a filesystem probe or buildDiskMap. Null: "not mine" (all kept). */
  map(r: ByteReader): Promise<readonly Extent[] | null>;
  cases: number;
  seed: number;
  /** Bytes flipped per case: 1..maxFlips, all within one target. Default 4. */
  maxFlips?: number;
}

export interface FuzzReport {
  cases: number;
  /** Mapped, same total as the pristine map. */
  unchanged: number;
  /** Mapped, but more (or other) bytes than the pristine map: a fallback or a changed map. */
  widened: number;
  /** Mapped less than the pristine map, but everything left out is zero. */
  narrowedSafely: number;
  /** One-line BmsnapError, by message shape. */
  refused: number;
  /** The mapper said "not this filesystem": the caller keeps the whole partition. */
  notRecognised: number;
  failures: string[];
  /** A few refusal messages, for the test log. */
  sampleRefusals: string[];
}

/** mulberry32: a tiny seeded PRNG, so every failing case can be replayed by its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Patch {
  offset: number;
  bytes: Uint8Array;
}

/** One case: 1..maxFlips bytes of one target XORed with a non-zero mask (so each really changes). */
export function corruption(rand: () => number, targets: readonly Target[], maxFlips: number): { target: Target; patches: Patch[] } {
  const target = targets[Math.floor(rand() * targets.length)]!;
  const flips = 1 + Math.floor(rand() * maxFlips);
  const patches: Patch[] = [];
  for (let i = 0; i < flips; i++) {
    const offset = target.offset + Math.floor(rand() * target.length);
    patches.push({ offset, bytes: Uint8Array.of(1 + Math.floor(rand() * 255)) });
  }
  return { target, patches };
}

/** A reader with the patches XORed into BASE's bytes (BASE itself is never written). */
export async function xorReader(base: ByteReader, patches: readonly Patch[]): Promise<{ reader: ByteReader; damaged: Patch[] }> {
  const damaged: Patch[] = [];
  const seen = new Map<number, number>();
  for (const p of patches) seen.set(p.offset, (seen.get(p.offset) ?? 0) ^ p.bytes[0]!);
  for (const [offset, mask] of seen) {
    if (mask === 0) continue;
    const b = Buffer.alloc(1);
    await base.readExact(b, offset);
    damaged.push({ offset, bytes: Uint8Array.of(b[0]! ^ mask) });
  }
  return { reader: patchedReader(base, damaged), damaged };
}

function total(extents: readonly Extent[]): number {
  return extents.reduce((n, e) => n + e.length, 0);
}

/** Non-zero bytes of R inside EXTENTS: the first few offsets, and whether there were any. */
async function nonZeroIn(r: ByteReader, extents: readonly Extent[]): Promise<number[]> {
  const found: number[] = [];
  const buf = Buffer.alloc(1 << 20);
  for (const e of extents) {
    for (let off = e.offset; off < e.offset + e.length; off += buf.length) {
      const n = Math.min(buf.length, e.offset + e.length - off);
      const view = buf.subarray(0, n);
      await r.readExact(view, off);
      for (let i = 0; i < n; i++) {
        if (view[i] !== 0) {
          found.push(off + i);
          break;
        }
      }
      if (found.length >= 4) return found;
    }
  }
  return found;
}

export async function fuzz(o: FuzzOptions): Promise<FuzzReport> {
  const rand = prng(o.seed);
  const reference = normalize(o.reference);
  const referenceBytes = total(reference);
  const report: FuzzReport = { cases: 0, unchanged: 0, widened: 0, narrowedSafely: 0, refused: 0, notRecognised: 0, failures: [], sampleRefusals: [] };
  for (let c = 0; c < o.cases; c++) {
    const { target, patches } = corruption(rand, o.targets, o.maxFlips ?? 4);
    const { reader, damaged } = await xorReader(o.base, patches);
    report.cases++;
    const label = `case ${c} (seed ${o.seed}, ${target.name}, bytes ${damaged.map((p) => p.offset).join(',')})`;
    let map: readonly Extent[] | null;
    try {
      map = await o.map(reader);
    } catch (err) {
      if (err instanceof BmsnapError && !err.message.includes('\n') && err.message.length > 0) {
        report.refused++;
        if (report.sampleRefusals.length < 5) report.sampleRefusals.push(err.message);
      } else {
        report.failures.push(`${label}: crashed: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
      }
      continue;
    }
    if (map === null) {
      report.notRecognised++;
      continue;
    }
    const mustKeep = normalize([...reference, ...damaged.map((p) => ({ offset: p.offset, length: 1 }))]);
    const left = subtract(mustKeep, normalize(map));
    const lost = await nonZeroIn(reader, left);
    if (lost.length) {
      report.failures.push(`${label}: the map leaves out used non-zero bytes at ${lost.join(', ')}`);
      continue;
    }
    const mapped = total(normalize(map));
    if (left.length) report.narrowedSafely++;
    else if (mapped === referenceBytes) report.unchanged++;
    else report.widened++;
  }
  return report;
}
