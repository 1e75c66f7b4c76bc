// The cluster tables of one qcow2 image in a chain, read from the front of its stream: which
// guest clusters it holds data for (and where), which it says are zeros, and - by omission -
// which it leaves to its parent. Only the flavour bmsnap writes is accepted (version 3, 64 KiB
// clusters, no backing file string, no snapshots, no encryption, tables before the data), so a
// foreign or damaged image is refused before any of its data is used.
import { CLUSTER_BITS, CLUSTER_SIZE, L2_ENTRIES, OFLAG_COMPRESSED } from '../encoder/qcow2/format.js';
import { ChainError } from '../incremental/errors.js';
import type { SequentialReader } from './sequential-reader.js';

/** Guest clusters an image holds, in guest order, in parallel arrays (millions of them fit). */
export interface ImageClusters {
  what: string;
  virtualSize: number;
  /** qcow2 compression_type: 0 deflate, 1 zstd. */
  compressionType: 0 | 1;
  /** Uncompressed clusters (bmsnap --compress none) rather than compressed frames. */
  plain: boolean;
  count: number;
  guest: Float64Array;
  /** Host offset of the cluster's bytes; -1 for a zero cluster. */
  offset: Float64Array;
  /** Bytes to copy: the frame's exact length where the next frame shows it, else up to the end of its last sector. */
  size: Uint32Array;
}

const INCOMPAT_COMPRESSION_TYPE = 1n << 3n;
const L1_OFFSET_MASK = 0x00fffffffffffe00n;
const PLAIN_OFFSET_MASK = 0x00fffffffffffe00n;
const CSIZE_SHIFT = 62n - BigInt(CLUSTER_BITS - 8);
const COMPRESSED_OFFSET_MASK = (1n << CSIZE_SHIFT) - 1n;
const CSIZE_MASK = (1n << BigInt(CLUSTER_BITS - 8)) - 1n;

export async function readImageClusters(r: SequentialReader): Promise<ImageClusters> {
  const bad = (why: string): never => { throw new ChainError(`${r.what} is not a bmsnap qcow2 image: ${why}`); };
  const h = await r.read(CLUSTER_SIZE).catch(() => bad('shorter than a qcow2 header'));
  if (h.toString('latin1', 0, 4) !== 'QFI\xfb') bad('no qcow2 magic');
  if (h.readUInt32BE(4) !== 3) bad(`qcow2 version ${h.readUInt32BE(4)}, not 3`);
  if (h.readBigUInt64BE(8) !== 0n) bad('it names a backing file (bmsnap records parents in image properties)');
  if (h.readUInt32BE(20) !== CLUSTER_BITS) bad(`${2 ** h.readUInt32BE(20)}-byte clusters, not ${CLUSTER_SIZE}`);
  if (h.readUInt32BE(32) !== 0) bad('it is encrypted');
  if (h.readUInt32BE(60) !== 0) bad('it holds internal snapshots');
  const incompat = h.readBigUInt64BE(72);
  if (incompat & ~INCOMPAT_COMPRESSION_TYPE) bad(`incompatible features 0x${incompat.toString(16)}`);
  const headerLength = h.readUInt32BE(100);
  const compressionType = incompat & INCOMPAT_COMPRESSION_TYPE && headerLength > 104 ? h[104]! : 0;
  if (compressionType > 1) bad(`compression type ${compressionType}`);
  const virtualSize = Number(h.readBigUInt64BE(24));
  const l1Size = h.readUInt32BE(36);
  const l1Offset = Number(h.readBigUInt64BE(40));
  if (l1Size < Math.ceil(virtualSize / CLUSTER_SIZE / L2_ENTRIES)) bad('its L1 table is too small for its size');

  await r.skipTo(l1Offset);
  const l1 = await r.read(l1Size * 8);
  const tables: { l1i: number; offset: number }[] = [];
  for (let i = 0; i < l1Size; i++) {
    const off = Number(l1.readBigUInt64BE(i * 8) & L1_OFFSET_MASK);
    if (off) tables.push({ l1i: i, offset: off });
  }
  tables.sort((a, b) => a.offset - b.offset);

  const out = new Growing();
  let plain: boolean | undefined;
  let tablesEnd = 0;
  // entries as they come, in host order of their tables; sorted into guest order below
  const raw: { guestBase: number; table: Buffer }[] = [];
  for (const t of tables) {
    if (t.offset < r.position) bad('its L2 tables overlap or come before its L1 table');
    await r.skipTo(t.offset);
    raw.push({ guestBase: t.l1i * L2_ENTRIES, table: await r.read(CLUSTER_SIZE) });
    tablesEnd = r.position;
  }
  raw.sort((a, b) => a.guestBase - b.guestBase);
  for (const { guestBase, table } of raw) {
    for (let j = 0; j < L2_ENTRIES; j++) {
      const e = table.readBigUInt64BE(j * 8);
      if (e === 0n) continue;
      const guest = guestBase + j;
      if (guest * CLUSTER_SIZE >= virtualSize) bad(`an entry past the end of the disk (cluster ${guest})`);
      if (e & OFLAG_COMPRESSED) {
        if (plain === true) bad('it mixes compressed and uncompressed clusters');
        plain = false;
        const offset = Number(e & COMPRESSED_OFFSET_MASK);
        const sectors = Number((e >> CSIZE_SHIFT) & CSIZE_MASK) + 1;
        out.push(guest, offset, (Math.floor(offset / 512) + sectors) * 512 - offset);
      } else if (e & 1n) {
        out.push(guest, -1, 0);
      } else {
        if (plain === false) bad('it mixes compressed and uncompressed clusters');
        plain = true;
        out.push(guest, Number(e & PLAIN_OFFSET_MASK), CLUSTER_SIZE);
      }
    }
  }
  // Data must follow the tables, in guest order (how bmsnap packs it): then one forward pass
  // reads it, and each frame ends where the next begins.
  let prev = -1;
  for (let k = 0; k < out.count; k++) {
    const off = out.offset[k]!;
    if (off < 0) continue;
    if (off < tablesEnd) bad('data before the end of its tables');
    if (prev >= 0) {
      const prevOff = out.offset[prev]!;
      if (off < prevOff + (plain ? CLUSTER_SIZE : 1)) bad('its data is not in guest order');
      out.size[prev] = Math.min(out.size[prev]!, off - prevOff);
    }
    prev = k;
  }
  return { what: r.what, virtualSize, compressionType: compressionType as 0 | 1, plain: plain === true, ...out.done() };
}

/** Appendable parallel arrays. */
class Growing {
  count = 0;
  guest = new Float64Array(1024);
  offset = new Float64Array(1024);
  size = new Uint32Array(1024);
  push(guest: number, offset: number, size: number): void {
    if (this.count === this.guest.length) {
      const grow = <T extends Float64Array | Uint32Array>(a: T): T => { const b = new (a.constructor as new (n: number) => T)(a.length * 2); b.set(a); return b; };
      this.guest = grow(this.guest); this.offset = grow(this.offset); this.size = grow(this.size);
    }
    this.guest[this.count] = guest; this.offset[this.count] = offset; this.size[this.count] = size;
    this.count++;
  }
  done() {
    return { count: this.count, guest: this.guest.subarray(0, this.count), offset: this.offset.subarray(0, this.count), size: this.size.subarray(0, this.count) };
  }
}
