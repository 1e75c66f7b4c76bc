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
import type { ClusterIndex } from '../incremental/cluster-index.js';
import { openChain, walkChain, type ChainMember } from './chain-walk.js';

export type { ChainMember } from './chain-walk.js';

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
  const chain = await openChain(members, topIndex);
  const { images, plan, sizes } = chain;
  const top = images[0]!;
  const used = clusterExtents(plan.guest, top.virtualSize);
  const layout = planLayout(top.virtualSize, used, chain.largest);
  for (const cluster of metadataClusters(layout, used, { codes: sizes, storedSize: STORED }, top.compressionType, top.plain)) await sink.write(cluster);

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
  // frames are copied as they are; the walk has checked their content against the index
  for await (const c of walkChain(chain, opts.signal ? { signal: opts.signal } : {})) {
    if (c.zero) continue;
    clustersFrom[c.image]!++;
    pending.push(c.frame);
    pendingBytes += c.frame.length;
    if (pendingBytes >= WRITE_CHUNK) await flush();
    progress.advance(CLUSTER_SIZE);
  }
  await flush();
  const pad = fileSizeFor(layout, dataBytes) - (layout.dataOffset + dataBytes);
  if (pad > 0) await sink.write(Buffer.alloc(pad));
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
