// Messages between the encoder and its compression workers.
import type { CodecName } from './codecs.js';

export interface WorkerConfig {
  codec: CodecName;
  level: number;
  clusterSize: number;
}

export interface CompressJob {
  id: number;
  /** `clusters` whole clusters, unused bytes already zeroed. Transferred, and handed back. */
  data: ArrayBuffer;
  clusters: number;
  /** false: sizing pass, only codes come back; true: the payloads come back too. */
  emit: boolean;
  /** emit only: the sizing pass's codes for these clusters (stored frames need no compressing). */
  known?: Uint16Array;
}

/** Per-cluster size code in the sizing table: 0 = all zero (not stored), STORED = stored frame. */
export const STORED = 0xffff;

export interface CompressResult {
  id: number;
  /** Size code per cluster: 0, STORED, or the compressed length (1..65534). */
  codes: Uint16Array;
  /** emit only: the stored payloads of the non-zero clusters, back to back. */
  payload?: ArrayBuffer;
  /** The job's input buffer, returned for reuse. */
  data: ArrayBuffer;
}
