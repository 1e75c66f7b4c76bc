// A chain (a delta, its parent, ... its full base) -> one standalone qcow2, as a stream.
//
// Each image is read once, front to back: first its tables (all of them come before the data
// in a bmsnap image), then its frames in guest order, skipping those a nearer image overrides.
// The output's metadata depends only on which frames it takes and their lengths, both known
// from the tables, so the output streams too, metadata first. Frames are copied as they are -
// nothing is recompressed - but every cluster is decompressed and checked against the top
// image's cluster index (which describes the whole disk, not only the delta), and every image
// read is checked against the digest its store recorded: a damaged or mismatched parent fails
// the run instead of producing a wrong image.
import { CLUSTER_SIZE } from '../encoder/qcow2/format.js';
import { fileSizeFor, planLayout } from '../encoder/qcow2/layout.js';
import { metadataClusters } from '../encoder/qcow2/metadata.js';
import { STORED } from '../encoder/compress/protocol.js';
import { noProgress, type Progress } from '../encoder/progress.js';
import type { Extent } from '../map/extents.js';
import type { Sink } from '../sink/sink.js';
import { HashingSink } from '../sink/hashing-sink.js';
import { VERSION } from '../version.js';
import { ClusterIndexBuilder, IndexCursor, type ClusterIndex } from '../incremental/cluster-index.js';
import { ChainError } from '../incremental/errors.js';
import { planChain } from './chain-plan.js';
import { decodeFrame } from './frame-decoder.js';
import { readImageClusters, type ImageClusters } from './image-clusters.js';
import type { SequentialReader } from './sequential-reader.js';

export interface ChainMember {
  reader: SequentialReader;
  /** What the image's store says it holds: checked once the image has been read through. */
  expect?: { size: number; sha512?: string };
}

export interface FlattenStats {
  images: number;
  /** Clusters copied, and of those how many came from each image (top first). */
  clusters: number;
  clustersFrom: number[];
  dataBytes: number;
  fileSize: number;
  compressionType: 0 | 1;
}

const WRITE_CHUNK = 1 << 20;

/** MEMBERS top first; TOPINDEX the top image's cluster index. Writes the flat image to SINK. */
export async function flattenChain(members: readonly ChainMember[], topIndex: ClusterIndex, sink: Sink, opts: { progress?: Progress; signal?: AbortSignal } = {}): Promise<FlattenStats> {
  const progress = opts.progress ?? noProgress;
  const images: ImageClusters[] = [];
  for (const m of members) images.push(await readImageClusters(m.reader));
  const top = images[0]!;
  if (topIndex.clusterSize !== CLUSTER_SIZE || topIndex.virtualSize !== top.virtualSize) {
    throw new ChainError(`the cluster index does not describe ${top.what} (a ${topIndex.virtualSize}-byte disk in ${topIndex.clusterSize}-byte clusters)`);
  }
  const plan = planChain(images);
  const sizes = new Uint32Array(plan.count);
  let largest = 1;
  for (let i = 0; i < plan.count; i++) {
    sizes[i] = images[plan.image[i]!]!.size[plan.entry[i]!]!;
    largest = Math.max(largest, sizes[i]!);
  }
  const used = clusterExtents(plan.guest, top.virtualSize);
  const layout = planLayout(top.virtualSize, used, largest);
  for (const cluster of metadataClusters(layout, used, { codes: sizes, storedSize: STORED }, top.compressionType, top.plain)) await sink.write(cluster);

  const check = await IndexCheck.create(topIndex);
  const clustersFrom = images.map(() => 0);
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let dataBytes = 0;
  const flush = async () => {
    if (!pendingBytes) return;
    await sink.write(pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes));
    dataBytes += pendingBytes;
    pending = [];
    pendingBytes = 0;
  };
  progress.phase('writing', plan.count * CLUSTER_SIZE);
  for (let i = 0; i < plan.count; i++) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    const k = plan.image[i]!;
    const im = images[k]!;
    const j = plan.entry[i]!;
    const reader = members[k]!.reader;
    await reader.skipTo(im.offset[j]!);
    const frame = await reader.read(sizes[i]!);
    const guest = plan.guest[i]!;
    check.cluster(guest, decodeFrame(im.compressionType, im.plain, frame, () => `cluster ${guest} of ${im.what}`), im.what);
    clustersFrom[k]!++;
    pending.push(frame);
    pendingBytes += frame.length;
    if (pendingBytes >= WRITE_CHUNK) await flush();
    progress.advance(CLUSTER_SIZE);
  }
  await flush();
  check.end();
  const pad = fileSizeFor(layout, dataBytes) - (layout.dataOffset + dataBytes);
  if (pad > 0) await sink.write(Buffer.alloc(pad));
  for (const m of members) {
    const got = await m.reader.drain();
    if (m.expect && (got.size !== m.expect.size || (m.expect.sha512 && got.sha512 !== m.expect.sha512))) {
      throw new ChainError(`${m.reader.what} is not what its store recorded (${got.size} bytes read, ${m.expect.size} expected${m.expect.sha512 ? ', or its sha512 differs' : ''})`);
    }
  }
  return { images: images.length, clusters: plan.count, clustersFrom, dataBytes, fileSize: fileSizeFor(layout, dataBytes), compressionType: top.compressionType };
}

/** Extents of whole clusters (the last one cut at the disk's end). */
function clusterExtents(guest: Float64Array, virtualSize: number): Extent[] {
  const out: Extent[] = [];
  for (const g of guest) {
    const offset = g * CLUSTER_SIZE;
    const length = Math.min(CLUSTER_SIZE, virtualSize - offset);
    const last = out[out.length - 1];
    if (last && last.offset + last.length === offset) last.length += length;
    else out.push({ offset, length });
  }
  return out;
}

/**
 * Walks the index alongside the clusters that have data: each such cluster must be one the index
 * maps, with its digest; each mapped cluster without data must read as zeros.
 */
class IndexCheck {
  private readonly at: IndexCursor;

  private constructor(index: ClusterIndex, private readonly hasher: ClusterIndexBuilder, private readonly zeroDigest: Buffer) {
    this.at = new IndexCursor(index);
  }

  static async create(index: ClusterIndex): Promise<IndexCheck> {
    const hasher = await ClusterIndexBuilder.create(index.clusterSize, index.virtualSize);
    return new IndexCheck(index, hasher, hasher.digest(1, Buffer.alloc(index.clusterSize)));
  }

  /** Mapped clusters before GUEST (exclusive) have no data anywhere in the chain: zeros. */
  private zerosUntil(guest: number): void {
    while (!this.at.done && this.at.cluster < guest) {
      if (!this.at.digest.equals(this.zeroDigest)) {
        throw new ChainError(`cluster ${this.at.cluster} is in the index but no image of the chain holds it: a parent is missing or is not the one the delta was made against`);
      }
      this.at.next();
    }
  }

  cluster(guest: number, data: Buffer, from: string): void {
    this.zerosUntil(guest);
    if (this.at.done || this.at.cluster !== guest) throw new ChainError(`${from} holds cluster ${guest}, which the index does not map: the chain does not match the index`);
    if (!this.hasher.digest(1, data).equals(this.at.digest)) {
      throw new ChainError(`cluster ${guest} from ${from} differs from the index: the image is damaged, or a parent is not the one the delta was made against`);
    }
    this.at.next();
  }

  end(): void {
    this.zerosUntil(Infinity);
  }
}

export interface FlattenManifest {
  tool: 'bmsnap';
  version: string;
  /** The chain, top first, as the caller named its images. */
  chain: string[];
  format: 'qcow2';
  virtualSize: number;
  bytesWritten: number;
  md5: string;
  sha512: string;
  flatten: FlattenStats;
  seconds: number;
}

/** flattenChain into SINK, hashed on the way; SINK is finished, or aborted on any failure. */
export async function flattenInto(members: readonly ChainMember[], topIndex: ClusterIndex, sink: Sink, opts: { progress?: Progress; signal?: AbortSignal } = {}): Promise<FlattenManifest> {
  const started = process.hrtime.bigint();
  const hashing = new HashingSink(sink);
  try {
    const stats = await flattenChain(members, topIndex, hashing, opts);
    const digests = await hashing.digests();
    await sink.finish();
    return {
      tool: 'bmsnap', version: VERSION, chain: members.map((m) => m.reader.what), format: 'qcow2',
      virtualSize: topIndex.virtualSize, bytesWritten: digests.size, md5: digests.md5, sha512: digests.sha512,
      flatten: stats, seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } catch (err) {
    await hashing.abort();
    throw err;
  } finally {
    await Promise.all(members.map((m) => m.reader.close()));
  }
}
