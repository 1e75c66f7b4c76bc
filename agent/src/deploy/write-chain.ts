// Deploying an image chain onto a disk: the clusters the chain holds data for, and the mapped
// clusters that read as zeros, written at their guest offsets; nothing else is touched (unmapped
// space is space no filesystem uses). Every cluster is checked against the top image's cluster
// index before it is written, and every image against its store's digest once read through, so
// a damaged or mismatched chain fails the deploy (the disk is then not bootable, and says so).
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { CLUSTER_SIZE } from '../encoder/qcow2/format.js';
import { noProgress, type Progress } from '../encoder/progress.js';
import { clusterCount, type ClusterIndex } from '../incremental/cluster-index.js';
import { OutputError } from '../errors.js';
import { describeDisk, errnoText } from '../source/open-source.js';
import { openChain, walkChain, type ChainMember } from '../chain/chain-walk.js';
import { relocateBackupGpt } from './gpt-relocate.js';

export interface WriteStats {
  target: string;
  virtualSize: number;
  targetSize: number;
  /** Clusters written with data, and mapped clusters written as zeros. */
  clusters: number;
  zeroClusters: number;
  bytesWritten: number;
  /** Of the data clusters, how many came from each image (top first). */
  clustersFrom: number[];
  /** The backup GPT moved to the end of a larger disk (what sgdisk -e does). */
  gptRelocated: boolean;
  seconds: number;
}

/** Writes are gathered into runs of adjacent clusters up to this size. */
const WRITE_RUN = 4 << 20;

/** MEMBERS top first (every image is closed at the end); TOPINDEX the top image's index; TARGET a block device or file. */
export async function writeChain(members: readonly ChainMember[], topIndex: ClusterIndex, target: string, opts: { progress?: Progress; signal?: AbortSignal } = {}): Promise<WriteStats> {
  const started = process.hrtime.bigint();
  const progress = opts.progress ?? noProgress;
  let fh: FileHandle | undefined;
  try {
    // O_EXCL on a block device: the kernel refuses (EBUSY) while it or a partition is mounted or held
    fh = await open(target, constants.O_RDWR | constants.O_EXCL).catch((err: NodeJS.ErrnoException) => {
      throw new OutputError(err.code === 'EBUSY' ? `${target} is in use (mounted, or held by another device): refusing to write it` : `cannot open ${target} for writing: ${errnoText(err)}`);
    });
    const { size: targetSize, sectorSize } = await describeDisk(fh, target);
    if (targetSize < topIndex.virtualSize) {
      throw new OutputError(`${target} holds ${targetSize} bytes, the image is a ${topIndex.virtualSize}-byte disk: the target disk is too small`);
    }
    const chain = await openChain(members, topIndex);
    const virtualSize = topIndex.virtualSize;
    const clustersFrom = chain.images.map(() => 0);
    const zero = Buffer.alloc(CLUSTER_SIZE);
    let run: Buffer[] = [];
    let runStart = 0;
    let runBytes = 0;
    let bytesWritten = 0;
    let zeroClusters = 0;
    const flush = async () => {
      if (!runBytes) return;
      const buf = run.length === 1 ? run[0]! : Buffer.concat(run, runBytes);
      const { bytesWritten: n } = await fh!.write(buf, 0, buf.length, runStart);
      if (n !== buf.length) throw new OutputError(`short write to ${target} at byte ${runStart}`);
      bytesWritten += n;
      run = []; runBytes = 0;
    };
    progress.phase('writing', clusterCount(topIndex) * CLUSTER_SIZE);
    for await (const c of walkChain(chain, { withZeros: true, ...(opts.signal ? { signal: opts.signal } : {}) })) {
      const offset = c.guest * CLUSTER_SIZE;
      const length = Math.min(CLUSTER_SIZE, virtualSize - offset);
      if (runBytes && (runStart + runBytes !== offset || runBytes >= WRITE_RUN)) await flush();
      if (!runBytes) runStart = offset;
      const bytes = c.zero ? zero : c.data;
      run.push(length === CLUSTER_SIZE ? bytes : bytes.subarray(0, length));
      runBytes += length;
      if (c.zero) zeroClusters++;
      else clustersFrom[c.image]!++;
      progress.advance(CLUSTER_SIZE);
    }
    await flush();
    await fh.sync();
    const gptRelocated = targetSize > virtualSize && await relocateBackupGpt(fh, target, sectorSize, targetSize);
    await fh.close();
    fh = undefined;
    return {
      target, virtualSize, targetSize, clusters: chain.plan.count, zeroClusters, bytesWritten, clustersFrom, gptRelocated,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } finally {
    await fh?.close().catch(() => undefined);
    await Promise.all(members.map((m) => m.reader.close()));
  }
}
