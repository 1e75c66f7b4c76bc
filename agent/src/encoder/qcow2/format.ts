// qcow2 version 3 on-disk constants and encoders (qemu docs/interop/qcow2.txt). bmsnap writes
// one fixed flavour: 64 KiB clusters, 16-bit refcounts, no snapshots, no backing file, no
// extensions; compressed clusters byte-packed, or (codec none) plain clusters; a delta
// (incremental/) also has zero-flagged clusters.

export const CLUSTER_BITS = 16;
export const CLUSTER_SIZE = 1 << CLUSTER_BITS;
export const REFCOUNT_ORDER = 4; // 16-bit refcounts
export const REFCOUNTS_PER_BLOCK = (CLUSTER_SIZE * 8) >> REFCOUNT_ORDER;
export const L2_ENTRIES = CLUSTER_SIZE / 8;
const HEADER_LENGTH = 112;

/** L1/L2 flag: refcount is exactly one (required on everything bmsnap allocates uncompressed). */
export const OFLAG_COPIED = 1n << 63n;
export const OFLAG_COMPRESSED = 1n << 62n;
const INCOMPAT_COMPRESSION_TYPE = 1n << 3n;

export interface HeaderFields {
  virtualSize: number;
  l1Size: number;
  l1Offset: number;
  refTableOffset: number;
  refTableClusters: number;
  compressionType: 0 | 1;
}

export function encodeHeader(h: HeaderFields): Buffer {
  const b = Buffer.alloc(CLUSTER_SIZE); // the rest of the cluster: zeros = end of extensions
  b.write('QFI\xfb', 0, 'latin1');
  b.writeUInt32BE(3, 4);
  // 8: backing file offset, 16: backing file size - none
  b.writeUInt32BE(CLUSTER_BITS, 20);
  b.writeBigUInt64BE(BigInt(h.virtualSize), 24);
  // 32: crypt method - none
  b.writeUInt32BE(h.l1Size, 36);
  b.writeBigUInt64BE(BigInt(h.l1Offset), 40);
  b.writeBigUInt64BE(BigInt(h.refTableOffset), 48);
  b.writeUInt32BE(h.refTableClusters, 56);
  // 60: nb_snapshots, 64: snapshots offset - none
  b.writeBigUInt64BE(h.compressionType ? INCOMPAT_COMPRESSION_TYPE : 0n, 72);
  // 80: compatible, 88: autoclear features - none
  b.writeUInt32BE(REFCOUNT_ORDER, 96);
  b.writeUInt32BE(HEADER_LENGTH, 100);
  b[104] = h.compressionType;
  return b;
}

/** L2 entry of a compressed cluster at `offset` spanning `size` bytes. */
export function compressedEntry(offset: number, size: number): bigint {
  const csizeShift = 62n - BigInt(CLUSTER_BITS - 8);
  // "additional sectors": sectors touched beyond the one holding the first byte.
  const extraSectors = BigInt(Math.floor((offset + size - 1) / 512) - Math.floor(offset / 512));
  return OFLAG_COMPRESSED | (extraSectors << csizeShift) | BigInt(offset);
}

/** L2 entry "reads as zeros" (standard cluster, bit 0, offset 0: nothing allocated). */
export const ZERO_ENTRY = 1n;

export function plainEntry(offset: number): bigint {
  return OFLAG_COPIED | BigInt(offset);
}
