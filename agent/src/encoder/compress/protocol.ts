// Messages between the encoder and its compression workers. Buffers travel by transfer and
// come back with the result, so a fixed set of them is reused and memory stays flat.
import type { CodecName } from './codecs.js';

export interface WorkerConfig {
  codec: CodecName;
  level: number;
  clusterSize: number;
}

export interface CompressJob {
  id: number;
  /** `clusters` whole clusters, unused bytes already zeroed. */
  data: ArrayBuffer;
  clusters: number;
  /** Where the payloads go (emit only): room for `clusters` stored frames. */
  out?: ArrayBuffer;
  /** Writing pass of a stream: the sizing pass's codes (stored frames need no compressing). */
  known?: Uint16Array;
}

/** Per-cluster size code in the sizing table: 0 = all zero (not stored), STORED = stored frame. */
export const STORED = 0xffff;

export interface CompressResult {
  id: number;
  /** Size code per cluster: 0, STORED, or the compressed length (1..65534). */
  codes: Uint16Array;
  data: ArrayBuffer;
  out?: ArrayBuffer;
  /** Bytes of payload at the start of `out`: the non-zero clusters' frames, back to back. */
  outLength: number;
}
