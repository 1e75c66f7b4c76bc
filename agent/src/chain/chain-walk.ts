// Walks a chain (a delta, its parent, ... its full base) in guest order: every cluster the chain
// holds data for, from the nearest image that has it, decompressed and checked against the top
// image's cluster index, and every cluster the index maps that no image holds (it must read as
// zeros). Flatten copies the frames into one image; deploy writes the clusters onto a disk. Each
// image is read once, front to back, and checked at the end against the digest its store
// recorded, so a damaged or mismatched parent fails the walk instead of giving a wrong result.
import { CLUSTER_SIZE } from '../encoder/qcow2/format.js';
import { ClusterIndexBuilder, IndexCursor, type ClusterIndex } from '../incremental/cluster-index.js';
import { ChainError } from '../incremental/errors.js';
import { planChain, type ChainPlan } from './chain-plan.js';
import { decodeFrame } from './frame-decoder.js';
import { readImageClusters, type ImageClusters } from './image-clusters.js';
import type { SequentialReader } from './sequential-reader.js';

export interface ChainMember {
  reader: SequentialReader;
  /** What the image's store says it holds: checked once the image has been read through. */
  expect?: { size: number; sha512?: string };
}

/** A chain whose tables have been read: what each image holds and which image supplies what. */
export interface OpenChain {
  members: readonly ChainMember[];
  /** Top first. */
  images: ImageClusters[];
  plan: ChainPlan;
  /** Bytes to copy for each planned cluster (its frame, or a whole plain cluster). */
  sizes: Uint32Array;
  largest: number;
  index: ClusterIndex;
}

/** Reads each image's tables (MEMBERS top first) and plans the chain; TOPINDEX describes the top image. */
export async function openChain(members: readonly ChainMember[], topIndex: ClusterIndex): Promise<OpenChain> {
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
  return { members, images, plan, sizes, largest, index: topIndex };
}

/** A cluster of the disk the chain describes: with its frame and bytes, or (ZERO) mapped and all zeros. */
export type ChainCluster =
  | { guest: number; zero: false; frame: Buffer; data: Buffer; image: number }
  | { guest: number; zero: true };

/**
 * Every mapped cluster in guest order (with WITHZEROS also those that read as zeros), checked
 * against the index; at the end every image is read through and compared with its store's digest.
 */
export async function* walkChain(chain: OpenChain, opts: { withZeros?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<ChainCluster> {
  const { images, plan, sizes, members } = chain;
  const check = await IndexCheck.create(chain.index);
  for (let i = 0; i < plan.count; i++) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    const k = plan.image[i]!;
    const im = images[k]!;
    const j = plan.entry[i]!;
    const reader = members[k]!.reader;
    await reader.skipTo(im.offset[j]!);
    const frame = await reader.read(sizes[i]!);
    const guest = plan.guest[i]!;
    const data = decodeFrame(im.compressionType, im.plain, frame, () => `cluster ${guest} of ${im.what}`);
    for (const z of check.zerosBefore(guest)) if (opts.withZeros) yield { guest: z, zero: true };
    check.cluster(guest, data, im.what);
    yield { guest, zero: false, frame, data, image: k };
  }
  for (const z of check.zerosBefore(Infinity)) if (opts.withZeros) yield { guest: z, zero: true };
  for (const m of members) {
    const got = await m.reader.drain();
    if (m.expect && (got.size !== m.expect.size || (m.expect.sha512 && got.sha512 !== m.expect.sha512))) {
      throw new ChainError(`${m.reader.what} is not what its store recorded (${got.size} bytes read, ${m.expect.size} expected${m.expect.sha512 ? ', or its sha512 differs' : ''})`);
    }
  }
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

  /** The mapped clusters before GUEST (exclusive): no image holds them, so they must be zeros. */
  *zerosBefore(guest: number): Generator<number> {
    while (!this.at.done && this.at.cluster < guest) {
      if (!this.at.digest.equals(this.zeroDigest)) {
        throw new ChainError(`cluster ${this.at.cluster} is in the index but no image of the chain holds it: a parent is missing or is not the one the delta was made against`);
      }
      const z = this.at.cluster;
      this.at.next();
      yield z;
    }
  }

  cluster(guest: number, data: Buffer, from: string): void {
    if (this.at.done || this.at.cluster !== guest) throw new ChainError(`${from} holds cluster ${guest}, which the index does not map: the chain does not match the index`);
    if (!this.hasher.digest(1, data).equals(this.at.digest)) {
      throw new ChainError(`cluster ${guest} from ${from} differs from the index: the image is damaged, or a parent is not the one the delta was made against`);
    }
    this.at.next();
  }
}
