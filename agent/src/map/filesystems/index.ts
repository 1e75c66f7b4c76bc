// The filesystem probes, strongest signature first: XFS (4-byte magic at 0), ext (2-byte magic
// at 1080 plus a sane superblock), swap (10-byte signature at the end of the first page), and
// FAT last because a FAT boot sector is recognised by plausibility more than by a magic.
import type { ByteReader } from '../../source/byte-reader.js';
import { extProbe } from './ext4.js';
import { fatProbe } from './fat.js';
import { swapProbe } from './swap.js';
import type { FsProbe, FsUsage } from './types.js';
import { xfsProbe } from './xfs.js';

export const probes: FsProbe[] = [xfsProbe, extProbe, swapProbe, fatProbe];

/**
 * The usage map of the first probe that recognises the partition, or null when none does (the
 * caller then keeps the whole partition). A FilesystemError from a probe propagates: a
 * recognised but insane filesystem must not silently fall through to another probe.
 */
export async function probeFilesystem(r: ByteReader): Promise<FsUsage | null> {
  for (const p of probes) {
    const usage = await p.probe(r);
    if (usage) return usage;
  }
  return null;
}
