// The imaging pipeline every front uses (CLI, IPA agent step, in-band modes):
//   source (read-only) -> used-block map -> encoder (qcow2 or raw) -> hashing -> sink
// It returns the manifest; on any failure the sink is aborted so no partial image survives.
import { availableParallelism, freemem } from 'node:os';
import type { Logger } from 'pino';
import { buildDiskMap, type DiskMap } from './map/build-map.js';
import { DEFAULT_LEVEL, type CodecName } from './encoder/compress/codecs.js';
import { encodeQcow2, type Qcow2Stats } from './encoder/qcow2-encoder.js';
import { encodeRaw } from './encoder/raw-encoder.js';
import { noProgress, type Progress } from './encoder/progress.js';
import { hashFile, type Digests } from './sink/hasher.js';
import { HashingSink } from './sink/hashing-sink.js';
import { isSeekable, type Sink } from './sink/sink.js';
import type { Source } from './source/open-source.js';
import { VERSION } from './version.js';
import { UsageError } from './errors.js';
import { countMappedClusters } from './encoder/cluster-plan.js';
import { CLUSTER_SIZE } from './encoder/qcow2/format.js';
import { ClusterIndexBuilder, clusterCount, serializeIndex, sha256Hex, type ClusterIndex } from './incremental/cluster-index.js';
import { checkParentShape, deltaUsed, planDelta } from './incremental/delta-plan.js';
import { hashDisk } from './incremental/hash-disk.js';

export type ImageFormat = 'qcow2' | 'raw';

export interface ImageOptions {
  format: ImageFormat;
  codec: CodecName;
  level?: number;
  workers?: number;
  /** qcow2 to a stream: memory for frames kept from the sizing pass (default: defaultFrameCache()). */
  frameCacheBytes?: number;
  progress?: Progress;
  signal?: AbortSignal;
  log?: Logger;
  /** The used-block map, if the caller already built it. */
  map?: DiskMap;
  /**
   * qcow2: build the image's cluster index (incremental/) and hand it, serialized, to `onIndex`
   * before the image is finished; with `parent` (the parent image's index and the SHA-256 of its
   * file) write a delta against it.
   */
  index?: { onIndex: (serialized: Buffer) => Promise<void> | void; parent?: { index: ClusterIndex; sha256: string } };
}

export interface DeltaManifest {
  /** SHA-256 of the parent's serialized index: which parent this delta goes on. */
  parentIndexSha256: string;
  changedClusters: number;
  droppedClusters: number;
  unchangedClusters: number;
}

export interface Manifest {
  tool: 'bmsnap';
  version: string;
  source: { path: string; kind: string; size: number; sectorSize: number };
  format: ImageFormat;
  compression: CodecName | 'n/a';
  compressionLevel?: number;
  virtualSize: number;
  bytesWritten: number;
  md5: string;
  sha512: string;
  partitionTable: DiskMap['table'] & { sectorSize: number };
  partitions: DiskMap['partitions'];
  volumes?: DiskMap['volumes'];
  outsidePartitionsBytes: number;
  usedBytes: number;
  qcow2?: Qcow2Stats;
  /** The image's cluster index: mapped clusters and the index file's SHA-256. */
  clusterIndex?: { clusters: number; digest: 'xxh3-128'; sha256: string };
  delta?: DeltaManifest;
  warnings: string[];
  seconds: number;
}

/**
 * A stream's writing pass re-sends the sizing pass's frames from memory instead of reading and
 * compressing the disk again. Default: a quarter of the memory available now, at most 2 GiB
 * (a ramdisk on a large node caches a typical image whole; a busy small host keeps its RAM).
 */
export function defaultFrameCache(): number {
  return Math.min(2 * 1024 ** 3, Math.floor(freemem() / 4));
}

export async function imageDisk(source: Source, sink: Sink, opts: ImageOptions): Promise<Manifest> {
  const started = process.hrtime.bigint();
  const progress = opts.progress ?? noProgress;
  // qcow2 into a file: one pass, then the file is hashed by reading it back (its header is
  // written last). Anything else is a stream, hashed in-line.
  const seekable = opts.format === 'qcow2' && isSeekable(sink) ? sink : undefined;
  const hashing = seekable ? undefined : new HashingSink(sink);
  try {
    const map = opts.map ?? await buildDiskMap(source, source.sectorSize);
    if (!opts.map) for (const w of map.warnings) opts.log?.warn(w);
    opts.log?.info({ table: map.table.type, partitions: map.partitions.length, usedBytes: map.usedBytes, size: map.size }, 'used-block map ready');
    let qcow2: Qcow2Stats | undefined;
    const level = opts.level ?? DEFAULT_LEVEL[opts.codec];
    let digests: Digests;
    if (opts.index && opts.format !== 'qcow2') throw new UsageError('a cluster index and deltas need the qcow2 format');
    // A delta: hash the whole disk first, then encode only the clusters the parent lacks.
    const parent = opts.index?.parent;
    if (parent) checkParentShape(parent.index, CLUSTER_SIZE, map.size);
    const current = parent ? await hashDisk(source, map, CLUSTER_SIZE, progress, opts.signal) : undefined;
    const plan = parent && current ? planDelta(parent.index, current) : undefined;
    const builder = opts.index && !current ? await ClusterIndexBuilder.create(CLUSTER_SIZE, map.size, countMappedClusters(map.used, CLUSTER_SIZE)) : undefined;
    const encodeMap = plan ? { ...map, used: deltaUsed(map.used, plan, CLUSTER_SIZE) } : map;
    if (opts.format === 'qcow2') {
      qcow2 = await encodeQcow2(source, encodeMap, seekable ? { seekable } : { stream: hashing! }, {
        ...(builder ? { index: builder } : {}),
        ...(plan ? { delta: { zeroRuns: plan.dropped } } : {}),
        codec: opts.codec,
        level,
        workers: opts.workers ?? availableParallelism(),
        frameCacheBytes: opts.frameCacheBytes ?? defaultFrameCache(),
        progress,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
    } else {
      await encodeRaw(source, map, hashing!, progress, opts.signal);
    }
    if (seekable) {
      progress.phase('hashing', qcow2!.fileSize);
      digests = await hashFile(seekable.partialPath);
      progress.advance(digests.size);
    } else {
      digests = await hashing!.digests();
    }
    const index = current ?? builder?.finish();
    const indexBytes = index ? serializeIndex(index) : undefined;
    if (indexBytes) await opts.index!.onIndex(indexBytes);
    await sink.finish();
    return {
      tool: 'bmsnap',
      version: VERSION,
      source: { path: source.path, kind: source.kind, size: source.size, sectorSize: map.sectorSize },
      format: opts.format,
      compression: opts.format === 'qcow2' ? opts.codec : 'n/a',
      ...(opts.format === 'qcow2' && opts.codec !== 'none' ? { compressionLevel: level } : {}),
      virtualSize: map.size,
      bytesWritten: digests.size,
      md5: digests.md5,
      sha512: digests.sha512,
      partitionTable: { ...map.table, sectorSize: map.sectorSize },
      partitions: map.partitions,
      ...(map.volumes ? { volumes: map.volumes } : {}),
      outsidePartitionsBytes: map.outsideBytes,
      usedBytes: map.usedBytes,
      ...(qcow2 ? { qcow2 } : {}),
      ...(index ? { clusterIndex: { clusters: clusterCount(index), digest: 'xxh3-128' as const, sha256: sha256Hex(indexBytes!) } } : {}),
      ...(plan ? { delta: { parentIndexSha256: parent!.sha256, changedClusters: plan.changedClusters, droppedClusters: plan.droppedClusters, unchangedClusters: plan.unchangedClusters } } : {}),
      warnings: map.warnings,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } catch (err) {
    await (hashing ?? sink).abort();
    throw err;
  }
}
