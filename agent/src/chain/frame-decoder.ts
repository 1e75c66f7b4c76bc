// Decompresses one qcow2 cluster frame, to check it against the cluster index (and, deploying,
// to write it). A frame may carry trailing bytes (the start of the next one, or padding): qemu
// reads whole sectors too, and both decoders stop at the end of the frame.
import { inflateRawSync } from 'node:zlib';
import zstd from 'zstd-napi/binding.js';
import { CLUSTER_SIZE } from '../encoder/qcow2/format.js';
import { ChainError } from '../incremental/errors.js';

export function decodeFrame(compressionType: 0 | 1, plain: boolean, frame: Buffer, what: () => string): Buffer {
  if (plain) return frame;
  try {
    if (compressionType === 1) {
      const out = Buffer.allocUnsafe(CLUSTER_SIZE);
      const n = zstd.decompress(out, frame.subarray(0, zstd.findFrameCompressedSize(frame)));
      if (n === CLUSTER_SIZE) return out;
    } else {
      const out = inflateRawSync(frame);
      if (out.length === CLUSTER_SIZE) return out;
    }
  } catch { /* reported below */ }
  throw new ChainError(`${what()} does not decompress to one cluster: the image is damaged`);
}
