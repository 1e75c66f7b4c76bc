// Disk -> compressed qcow2.
//
// The metadata area's size is fixed by the used-block map (qcow2/layout.ts); the data offsets
// depend on every cluster's compressed size. So:
// - to a seekable output (a file) it is ONE pass: clusters are read, compressed and written
//   from the data offset on, the sizes are recorded, then the metadata is written in front;
// - to a stream (stdout, an HTTP body into Glance) the header at byte 0 must already point at
//   the right offsets, so a SIZING pass compresses the clusters only to record their sizes
//   (2 bytes per mapped cluster), then the WRITING pass emits the metadata and the clusters.
//   Compression is deterministic, so the writing pass must reproduce every size; if it does
//   not, the source changed under us and the run fails (SourceChangedError).
//   The sizing pass keeps the frames it made, up to `frameCacheBytes`: the writing pass sends
//   those as they are and re-reads and recompresses only the rest. With the whole image cached
//   a stream costs one read and one compression, like a file; with 0 it costs two of each.
// Both produce the same bytes. Memory is bounded by the batches in flight, the size table and
// the frame cache.
import { SourceChangedError } from '../errors.js';
import type { DiskMap } from '../map/build-map.js';
import type { ByteReader } from '../source/byte-reader.js';
import type { SeekableSink, Sink } from '../sink/sink.js';
import { readBatch } from './batch-reader.js';
import { countMappedClusters, planBatches, type Batch } from './cluster-plan.js';
import { createCodec, type CodecName } from './compress/codecs.js';
import { CompressionPool } from './compress/pool.js';
import { STORED } from './compress/protocol.js';
import { noProgress, type Progress } from './progress.js';
import { pipelineInOrder } from './ordered.js';
import { FrameCache } from './frame-cache.js';
import { CLUSTER_SIZE } from './qcow2/format.js';
import { fileSizeFor, planLayout, type Layout, type SizeTable } from './qcow2/layout.js';
import { metadataClusters } from './qcow2/metadata.js';
import type { ClusterIndexBuilder, ClusterRun } from '../incremental/cluster-index.js';

export interface EncodeOptions {
  codec: CodecName;
  level: number;
  workers: number;
  progress?: Progress;
  signal?: AbortSignal;
  /** Stream output only: bytes of sizing-pass frames kept for the writing pass (default 0). */
  frameCacheBytes?: number;
  /** Fed every mapped cluster's digest, in order, during the first pass (incremental/). */
  index?: ClusterIndexBuilder;
  /**
   * A delta, to be read over its parent: these clusters, and every all-zero mapped one, get
   * explicit zero entries (an unallocated cluster would show the parent's bytes through).
   */
  delta?: { zeroRuns: readonly ClusterRun[] };
}

export interface Qcow2Stats {
  clusterSize: number;
  /** 'single-pass' (seekable output) or 'sizing+writing' (stream). */
  passes: 'single-pass' | 'sizing+writing';
  /** Stream output: clusters the writing pass took from the frame cache instead of recompressing. */
  cachedClusters?: number;
  mappedClusters: number;
  zeroClusters: number;
  storedFrames: number;
  compressedClusters: number;
  dataBytes: number;
  metadataBytes: number;
  fileSize: number;
}

const BATCH_CLUSTERS = 32;

/** One batch's result: size codes, and the frames back to back when they were asked for. */
interface BatchFrames {
  codes: Uint16Array;
  /** The clusters' digests, when the pass feeds the index. */
  digests?: Buffer;
  payload: Buffer | undefined;
  /** The pooled buffer `payload` lives in (returned to the pool once consumed). */
  out?: ArrayBuffer;
}

interface OrdinalBatch extends Batch {
  /** Index of the batch's first cluster among all mapped clusters (into the size table). */
  ordinal: number;
}

export async function encodeQcow2(src: ByteReader, map: DiskMap, out: { stream: Sink } | { seekable: SeekableSink }, opts: EncodeOptions): Promise<Qcow2Stats> {
  const progress = opts.progress ?? noProgress;
  const codec = createCodec(opts.codec, opts.level, CLUSTER_SIZE);
  const pool = new CompressionPool({ codec: opts.codec, level: opts.level, clusterSize: CLUSTER_SIZE }, opts.workers);
  const inFlight = opts.workers * 2 + 2;
  const table: SizeTable = { codes: new Uint16Array(countMappedClusters(map.used, CLUSTER_SIZE)), storedSize: codec.storedSize };
  const layout = planLayout(map.size, map.used, codec.storedSize, opts.delta?.zeroRuns);
  // Batch and payload buffers go to a worker and come back: a fixed set of them bounds memory.
  const freeData: ArrayBuffer[] = [];
  const freeOut: ArrayBuffer[] = [];
  const bytesOf = (b: Batch) => b.used.reduce((n, e) => n + e.length, 0);
  // Payloads of sizing-pass batches, by batch ordinal (a prefix of the image, in practice).
  const cache = new FrameCache('stream' in out ? opts.frameCacheBytes ?? 0 : 0);

  /** Runs every batch through read -> compress, and hands results to `consume` in order. */
  const runPass = (mode: 'size' | 'emit' | 'verify', consume: (r: BatchFrames, b: OrdinalBatch) => Promise<void> | void) =>
    pipelineInOrder(withOrdinals(planBatches(map.used, CLUSTER_SIZE, BATCH_CLUSTERS)), inFlight, async (b): Promise<BatchFrames> => {
      const cached = mode === 'verify' ? cache.take(b.ordinal) : undefined;
      if (cached) {
        return { codes: table.codes.subarray(b.ordinal, b.ordinal + b.clusters), payload: cached };
      }
      const data = freeData.pop() ?? new ArrayBuffer(BATCH_CLUSTERS * CLUSTER_SIZE);
      try {
        await readBatch(src, b, CLUSTER_SIZE, Buffer.from(data));
      } catch (err) {
        freeData.push(data);
        throw err;
      }
      // (before the buffer goes to a worker; added to the index in order, by the consumer)
      const digests = opts.index && mode !== 'verify' ? opts.index.digest(b.clusters, Buffer.from(data)) : undefined;
      // The sizing pass asks for the frames only while the cache has room for them.
      const wantFrames = mode !== 'size' || cache.accepting;
      const out = wantFrames ? freeOut.pop() ?? new ArrayBuffer(BATCH_CLUSTERS * codec.storedSize) : undefined;
      const known = mode === 'verify' ? table.codes.slice(b.ordinal, b.ordinal + b.clusters) : undefined;
      const r = await pool.run(data, b.clusters, out, known);
      freeData.push(r.data);
      return { codes: r.codes, payload: r.out ? Buffer.from(r.out, 0, r.outLength) : undefined, ...(r.out ? { out: r.out } : {}), ...(digests ? { digests } : {}) };
    }, async (r, b) => {
      if (r.digests) opts.index!.addDigests(b.firstCluster, b.clusters, r.digests);
      try {
        await consume(r, b);
      } finally {
        if (r.out) freeOut.push(r.out);
      }
      progress.advance(bytesOf(b));
    }, opts.signal);

  /** Sizing pass: keep a copy of the batch's frames while the cache budget lasts. */
  let cachedClusters = 0;
  const keepFrames = (r: BatchFrames, b: OrdinalBatch) => {
    if (r.payload && cache.keep(b.ordinal, r.payload)) cachedClusters += b.clusters;
  };

  const writeMetadata = async (write: (chunk: Buffer, position: number) => Promise<void>) => {
    let pos = 0;
    for (const cluster of metadataClusters(layout, map.used, table, codec.qcowCompressionType, opts.codec === 'none', opts.delta?.zeroRuns)) {
      await write(cluster, pos);
      pos += cluster.length;
    }
  };

  try {
    let dataBytes = 0;
    if ('seekable' in out) {
      const sink = out.seekable;
      progress.phase('writing', map.usedBytes);
      await runPass('emit', async (r, b) => {
        table.codes.set(r.codes, b.ordinal);
        const payload = r.payload!;
        if (payload.length) await sink.writeAt(payload, layout.dataOffset + dataBytes);
        dataBytes += payload.length;
      });
      await writeMetadata((chunk, pos) => sink.writeAt(chunk, pos));
      await padTo(layout, dataBytes, (zeros, pos) => sink.writeAt(zeros, pos));
    } else {
      const sink = out.stream;
      progress.phase('sizing', map.usedBytes);
      await runPass('size', (r, b) => {
        table.codes.set(r.codes, b.ordinal);
        keepFrames(r, b);
      });

      await writeMetadata((chunk) => sink.write(chunk));
      progress.phase('writing', map.usedBytes);
      await runPass('verify', async (r, b) => {
        for (let i = 0; i < r.codes.length; i++) {
          if (r.codes[i] !== table.codes[b.ordinal + i]) {
            throw new SourceChangedError(`the source changed while it was being imaged (cluster at byte ${(b.firstCluster + i) * CLUSTER_SIZE}); image an unmounted disk or a frozen snapshot`);
          }
        }
        const payload = r.payload!;
        if (payload.length) await sink.write(payload);
        dataBytes += payload.length;
      });
      await padTo(layout, dataBytes, (zeros) => sink.write(zeros));
    }
    const result = stats(table, layout, dataBytes, 'seekable' in out ? 'single-pass' : 'sizing+writing');
    return 'stream' in out ? { ...result, cachedClusters } : result;
  } finally {
    await pool.close();
  }
}

async function padTo(layout: Layout, dataBytes: number, write: (zeros: Buffer, position: number) => Promise<void>): Promise<void> {
  const end = layout.dataOffset + dataBytes;
  const pad = fileSizeFor(layout, dataBytes) - end;
  if (pad > 0) await write(Buffer.alloc(pad), end);
}

function stats(table: SizeTable, layout: Layout, dataBytes: number, passes: Qcow2Stats['passes']): Qcow2Stats {
  let zeroClusters = 0;
  let storedFrames = 0;
  for (const c of table.codes) { if (c === 0) zeroClusters++; else if (c === STORED) storedFrames++; }
  return {
    clusterSize: CLUSTER_SIZE,
    passes,
    mappedClusters: table.codes.length,
    zeroClusters,
    storedFrames,
    compressedClusters: table.codes.length - zeroClusters - storedFrames,
    dataBytes,
    metadataBytes: layout.dataOffset,
    fileSize: fileSizeFor(layout, dataBytes),
  };
}

function* withOrdinals(batches: Iterable<Batch>): Generator<OrdinalBatch> {
  let ordinal = 0;
  for (const b of batches) {
    yield { ...b, ordinal };
    ordinal += b.clusters;
  }
}
