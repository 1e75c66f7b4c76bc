// Disk -> compressed qcow2, written front to back.
//
// Pass 1 (sizing) reads the mapped clusters and compresses them only to learn each cluster's
// stored size (2 bytes of memory per mapped cluster). With every size known, the layout - and
// so the header, L1, refcounts and L2 tables - is fixed before the first byte goes out.
// Pass 2 (writing) emits the metadata, then reads and compresses the clusters again and emits
// them. Compression is deterministic, so pass 2 must reproduce pass 1's sizes exactly; if it
// does not, the source changed under us and the run fails (SourceChangedError).
// Why two passes: in a qcow2 the header at byte 0 points (via L1 and L2) at the offsets of
// compressed clusters, which depend on every earlier cluster's compressed size. Without a
// seekable output or an unbounded buffer, those sizes have to be known first.
import { SourceChangedError } from '../errors.js';
import type { DiskMap } from '../map/build-map.js';
import type { ByteReader } from '../source/byte-reader.js';
import type { Sink } from '../sink/sink.js';
import { readBatch } from './batch-reader.js';
import { countMappedClusters, planBatches, type Batch } from './cluster-plan.js';
import { createCodec, type CodecName } from './compress/codecs.js';
import { CompressionPool } from './compress/pool.js';
import { STORED, type CompressResult } from './compress/protocol.js';
import { noProgress, type Progress } from './progress.js';
import { pipelineInOrder } from './ordered.js';
import { CLUSTER_SIZE } from './qcow2/format.js';
import { computeLayout, sizeOf, type SizeTable } from './qcow2/layout.js';
import { metadataClusters } from './qcow2/metadata.js';

export interface EncodeOptions {
  codec: CodecName;
  level: number;
  workers: number;
  progress?: Progress;
  signal?: AbortSignal;
}

export interface Qcow2Stats {
  clusterSize: number;
  mappedClusters: number;
  zeroClusters: number;
  storedFrames: number;
  compressedClusters: number;
  dataBytes: number;
  metadataBytes: number;
  fileSize: number;
}

const BATCH_CLUSTERS = 32;

export async function encodeQcow2(src: ByteReader, map: DiskMap, sink: Sink, opts: EncodeOptions): Promise<Qcow2Stats> {
  const progress = opts.progress ?? noProgress;
  const codec = createCodec(opts.codec, opts.level, CLUSTER_SIZE);
  const pool = new CompressionPool({ codec: opts.codec, level: opts.level, clusterSize: CLUSTER_SIZE }, opts.workers);
  const inFlight = opts.workers * 2 + 2;
  const batches = () => planBatches(map.used, CLUSTER_SIZE, BATCH_CLUSTERS);
  const bytesOf = (b: Batch) => b.used.reduce((n, e) => n + e.length, 0);
  const readAndCompress = (emit: boolean) => async (b: Batch) => {
    const buf = await readBatch(src, b, CLUSTER_SIZE);
    return pool.run(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length) as ArrayBuffer, b.clusters, emit);
  };
  try {
    // Pass 1: sizes.
    const table: SizeTable = { codes: new Uint16Array(countMappedClusters(map.used, CLUSTER_SIZE)), storedSize: codec.storedSize };
    let k = 0;
    progress.phase('sizing', map.usedBytes);
    await pipelineInOrder(batches(), inFlight, readAndCompress(false), (r: CompressResult, b) => {
      table.codes.set(r.codes, k);
      k += r.codes.length;
      progress.advance(bytesOf(b));
    }, opts.signal);

    // Metadata, then pass 2: data.
    const layout = computeLayout(map.size, map.used, table);
    for (const cluster of metadataClusters(layout, map.used, table, codec.qcowCompressionType, opts.codec === 'none')) {
      await sink.write(cluster);
    }
    k = 0;
    let written = 0;
    progress.phase('writing', map.usedBytes);
    await pipelineInOrder(batches(), inFlight, readAndCompress(true), async (r: CompressResult, b) => {
      for (let i = 0; i < r.codes.length; i++, k++) {
        if (r.codes[i] !== table.codes[k]) {
          throw new SourceChangedError(`the source changed while it was being imaged (cluster at byte ${(b.firstCluster + i) * CLUSTER_SIZE}); image an unmounted disk or a frozen snapshot`);
        }
      }
      const payload = Buffer.from(r.payload!);
      written += payload.length;
      if (payload.length) await sink.write(payload);
      progress.advance(bytesOf(b));
    }, opts.signal);
    const pad = layout.fileSize - layout.dataOffset - written;
    if (pad > 0) await sink.write(Buffer.alloc(pad));

    let zeroClusters = 0;
    let storedFrames = 0;
    for (const c of table.codes) { if (c === 0) zeroClusters++; else if (c === STORED) storedFrames++; }
    return {
      clusterSize: CLUSTER_SIZE,
      mappedClusters: table.codes.length,
      zeroClusters,
      storedFrames,
      compressedClusters: table.codes.length - zeroClusters - storedFrames,
      dataBytes: layout.dataBytes,
      metadataBytes: layout.dataOffset,
      fileSize: layout.fileSize,
    };
  } finally {
    await pool.close();
  }
}

export { sizeOf };
