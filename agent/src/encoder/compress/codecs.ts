// Per-cluster codecs for qcow2 compressed clusters. Each cluster is compressed on its own
// (qemu decompresses clusters independently). A cluster that does not shrink is written as a
// "stored" frame of the same codec - a valid compressed stream with fixed, known size - so every
// non-zero cluster is byte-packed and no alignment padding is ever needed.
import { deflateRawSync } from 'node:zlib';
import { Compressor } from 'zstd-napi';

export type CodecName = 'zstd' | 'zlib' | 'none';

export interface ClusterCodec {
  readonly name: CodecName;
  /** qcow2 header compression_type (0 = zlib/deflate, 1 = zstd). */
  readonly qcowCompressionType: 0 | 1;
  /** Size of the frame `store()` returns for one cluster. */
  readonly storedSize: number;
  compress(cluster: Buffer): Buffer;
  store(cluster: Buffer): Buffer;
}

/** Default level per codec: the fast end, where multi-core throughput beats the disk. */
export const DEFAULT_LEVEL: Record<CodecName, number> = { zstd: 1, zlib: 1, none: 0 };

export function createCodec(name: CodecName, level: number, clusterSize: number): ClusterCodec {
  switch (name) {
    case 'zstd': return zstdCodec(level, clusterSize);
    case 'zlib': return zlibCodec(level, clusterSize);
    case 'none': return {
      name, qcowCompressionType: 0, storedSize: clusterSize,
      compress: (c) => c,
      store: (c) => c,
    };
  }
}

function zstdCodec(level: number, clusterSize: number): ClusterCodec {
  if (clusterSize > 65536 + 255) throw new Error('zstd stored frames are built for clusters up to 64 KiB');
  const cctx = new Compressor();
  cctx.setParameters({ compressionLevel: level, checksumFlag: false, contentSizeFlag: true, dictIDFlag: false });
  // RFC 8878 frame: magic, descriptor (single segment, 2-byte content size), one raw last block.
  const head = Buffer.alloc(10);
  head.writeUInt32LE(0xfd2fb528, 0);
  head[4] = 0x60;
  head.writeUInt16LE(clusterSize - 256, 5);
  head.writeUIntLE((clusterSize << 3) | 1, 7, 3);
  return {
    name: 'zstd',
    qcowCompressionType: 1,
    storedSize: head.length + clusterSize,
    compress: (c) => cctx.compress(c),
    store: (c) => Buffer.concat([head, c]),
  };
}

function zlibCodec(level: number, clusterSize: number): ClusterCodec {
  // qemu inflates qcow2 clusters with a 4 KiB window (windowBits -12): never use a bigger one.
  const options = { level, windowBits: 12, memLevel: 9 };
  return {
    name: 'zlib',
    qcowCompressionType: 0,
    storedSize: clusterSize + 5 * Math.ceil(clusterSize / 65535),
    compress: (c) => deflateRawSync(c, options),
    store: (c) => deflateStored(c),
  };
}

/** RFC 1951 stored blocks (BTYPE 00) of at most 65535 bytes each. */
function deflateStored(data: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let off = 0; off < data.length; off += 65535) {
    const len = Math.min(65535, data.length - off);
    const h = Buffer.alloc(5);
    h[0] = off + len >= data.length ? 1 : 0;
    h.writeUInt16LE(len, 1);
    h.writeUInt16LE(~len & 0xffff, 3);
    parts.push(h, data.subarray(off, off + len));
  }
  return Buffer.concat(parts);
}
