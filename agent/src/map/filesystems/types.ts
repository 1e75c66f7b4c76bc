// What a filesystem probe reports: the byte ranges of one partition that the filesystem uses.
import type { ByteReader } from '../../source/byte-reader.js';
import type { Extent } from '../extents.js';

export interface FsUsage {
  /** Filesystem as users name it: ext2, ext3, ext4, xfs, vfat, swap. */
  fs: string;
  /**
   * Used byte ranges relative to the partition start, normalized (see extents.ts). Must cover
   * every block the filesystem uses, metadata and journal included: a block left out is lost.
   */
  used: Extent[];
  /** Allocation unit in bytes (block, or cluster for vfat/bigalloc). */
  blockSize: number;
  /** How the map was read, for the manifest: e.g. "ext4 block bitmaps". */
  method: string;
  label?: string;
  uuid?: string;
  /** Non-fatal oddities worth a log line. */
  warnings?: string[];
}

export interface FsProbe {
  readonly name: string;
  /**
   * Returns null when the partition does not hold this filesystem (no magic), the usage map
   * when it does, and throws FilesystemError when the magic is there but the metadata is not sane.
   */
  probe(r: ByteReader): Promise<FsUsage | null>;
}
