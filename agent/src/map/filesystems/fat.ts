// FAT12/16/32 used-block map: everything before the first data cluster (boot sector, reserved
// sectors, every FAT copy, the FAT12/16 root directory) plus each data cluster whose entry in
// the active FAT is non-zero (allocated, end of chain, or marked bad).
//
// The FAT type follows the Linux kernel's rule: FAT32 when the 16-bit FAT size is zero,
// otherwise FAT12 up to 4084 clusters and FAT16 above.
import { FilesystemError } from '../../errors.js';
import { readBytes, type ByteReader } from '../../source/byte-reader.js';
import { normalize, type Extent } from '../extents.js';
import type { FsProbe, FsUsage } from './types.js';

const MAX_FAT12_CLUSTERS = 4084;
const FIRST_CLUSTER = 2;
/** FAT32 reads are chunked; a multiple of 4 so no entry straddles two chunks. */
const FAT_CHUNK = 4 << 20;

interface Bpb {
  bytesPerSector: number;
  sectorsPerCluster: number;
  reservedSectors: number;
  numFats: number;
  rootEntries: number;
  totalSectors: number;
  fatSectors: number;
  fat32: boolean;
  activeFat: number;
  rootCluster: number;
  label: string;
  uuid?: string;
}

export const fatProbe: FsProbe = {
  name: 'vfat',
  async probe(r: ByteReader): Promise<FsUsage | null> {
    if (r.size < 512) return null;
    const boot = await readBytes(r, 0, 512);
    const bpb = parseBpb(boot);
    if (!bpb) return null;

    const bps = bpb.bytesPerSector;
    const clusterBytes = bps * bpb.sectorsPerCluster;
    const rootDirSectors = Math.ceil((bpb.rootEntries * 32) / bps);
    const firstDataSector = bpb.reservedSectors + bpb.numFats * bpb.fatSectors + rootDirSectors;
    if (bpb.totalSectors * bps > r.size) {
      throw new FilesystemError(`vfat: boot sector claims ${bpb.totalSectors * bps} bytes but the partition holds ${r.size}`);
    }
    if (firstDataSector >= bpb.totalSectors) {
      throw new FilesystemError(`vfat: metadata (${firstDataSector} sectors) does not leave room for data in ${bpb.totalSectors} sectors`);
    }
    const clusters = Math.floor((bpb.totalSectors - firstDataSector) / bpb.sectorsPerCluster);
    const bits = bpb.fat32 ? 32 : clusters <= MAX_FAT12_CLUSTERS ? 12 : 16;
    if (bpb.fat32 && bpb.rootEntries !== 0) throw new FilesystemError(`vfat: FAT32 boot sector with ${bpb.rootEntries} fixed root entries`);
    if (!bpb.fat32 && bpb.rootEntries === 0) throw new FilesystemError('vfat: FAT12/16 boot sector without root directory entries');

    const warnings: string[] = [];
    const fatBytes = bpb.fatSectors * bps;
    const entriesInFat = Math.floor((fatBytes * 8) / bits);
    // Clusters the FAT has no entry for cannot be allocated, but keep them rather than guess.
    const mapped = Math.min(clusters, entriesInFat - FIRST_CLUSTER);
    const dataStart = firstDataSector * bps;
    const used: Extent[] = [{ offset: 0, length: dataStart }];
    if (mapped < clusters) {
      warnings.push(`vfat: FAT holds entries for ${mapped} of ${clusters} clusters; the rest is kept`);
      used.push({ offset: dataStart + mapped * clusterBytes, length: (clusters - mapped) * clusterBytes });
    }
    const fatStart = (bpb.reservedSectors + bpb.activeFat * bpb.fatSectors) * bps;
    await scanFat(r, fatStart, bits, mapped, (first, count) => {
      used.push({ offset: dataStart + (first - FIRST_CLUSTER) * clusterBytes, length: count * clusterBytes });
    });
    if (bpb.fat32) {
      const root = bpb.rootCluster;
      if (root < FIRST_CLUSTER || root >= clusters + FIRST_CLUSTER) throw new FilesystemError(`vfat: FAT32 root cluster ${root} is outside the ${clusters} data clusters`);
      used.push({ offset: dataStart + (root - FIRST_CLUSTER) * clusterBytes, length: clusterBytes });
    }
    return {
      fs: 'vfat',
      used: normalize(used),
      blockSize: clusterBytes,
      method: `FAT table (FAT${bits})`,
      ...(bpb.label ? { label: bpb.label } : {}),
      ...(bpb.uuid ? { uuid: bpb.uuid } : {}),
      ...(warnings.length ? { warnings } : {}),
    };
  },
};

const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

/**
 * Returns null when the sector does not look like a FAT boot sector at all. A boot sector that
 * names itself FAT (the type string) or carries a plausible BPB behind a jump and the 0x55AA
 * signature is FAT; past that point, impossible values are errors.
 */
function parseBpb(b: Buffer): Bpb | null {
  const typeString = b.toString('latin1', 54, 57) === 'FAT' || b.toString('latin1', 82, 87) === 'FAT32';
  const bytesPerSector = b.readUInt16LE(11);
  const sectorsPerCluster = b.readUInt8(13);
  const reservedSectors = b.readUInt16LE(14);
  const numFats = b.readUInt8(16);
  const media = b.readUInt8(21);
  const plausible =
    [512, 1024, 2048, 4096].includes(bytesPerSector) &&
    isPow2(sectorsPerCluster) &&
    reservedSectors >= 1 &&
    numFats >= 1 && numFats <= 4 &&
    (media === 0xf0 || media >= 0xf8);
  const jump = b[0] === 0xeb || b[0] === 0xe9;
  const signature = b[510] === 0x55 && b[511] === 0xaa;
  if (!typeString && !(jump && signature && plausible)) return null;
  if (!plausible) {
    throw new FilesystemError(
      `vfat: boot sector is not sane (bytes/sector ${bytesPerSector}, sectors/cluster ${sectorsPerCluster}, reserved ${reservedSectors}, FATs ${numFats}, media 0x${media.toString(16)})`,
    );
  }
  const fat16Size = b.readUInt16LE(22);
  const fat32 = fat16Size === 0;
  const fatSectors = fat32 ? b.readUInt32LE(36) : fat16Size;
  const totalSectors = b.readUInt16LE(19) || b.readUInt32LE(32);
  if (fatSectors === 0) throw new FilesystemError('vfat: boot sector gives a FAT size of 0 sectors');
  if (totalSectors === 0) throw new FilesystemError('vfat: boot sector gives a total size of 0 sectors');
  const extFlags = fat32 ? b.readUInt16LE(40) : 0;
  // FAT32 may turn mirroring off (bit 7) and name the one FAT in use (low 4 bits).
  const activeFat = extFlags & 0x80 ? extFlags & 0x0f : 0;
  if (activeFat >= numFats) throw new FilesystemError(`vfat: active FAT ${activeFat} of ${numFats}`);
  const ext = fat32 ? 64 : 36; // the extended BPB (drive, signature, id, label) moves on FAT32
  const hasExtBpb = b[ext + 2] === 0x29 || b[ext + 2] === 0x28;
  const label = hasExtBpb && b[ext + 2] === 0x29 ? b.toString('latin1', ext + 7, ext + 18).trim() : '';
  const id = b.readUInt32LE(ext + 3);
  const hex = (n: number): string => n.toString(16).toUpperCase().padStart(4, '0');
  return {
    bytesPerSector,
    sectorsPerCluster,
    reservedSectors,
    numFats,
    rootEntries: b.readUInt16LE(17),
    totalSectors,
    fatSectors,
    fat32,
    activeFat,
    rootCluster: fat32 ? b.readUInt32LE(44) : 0,
    label: label === 'NO NAME' ? '' : label,
    ...(hasExtBpb ? { uuid: `${hex(id >>> 16)}-${hex(id & 0xffff)}` } : {}),
  };
}

/** Calls `onRun(firstCluster, count)` for every run of clusters with non-zero FAT entries. */
async function scanFat(
  r: ByteReader,
  fatStart: number,
  bits: number,
  clusters: number,
  onRun: (first: number, count: number) => void,
): Promise<void> {
  const end = FIRST_CLUSTER + clusters;
  let runStart = -1;
  const visit = (cluster: number, inUse: boolean): void => {
    if (inUse && runStart < 0) runStart = cluster;
    else if (!inUse && runStart >= 0) {
      onRun(runStart, cluster - runStart);
      runStart = -1;
    }
  };
  if (bits === 32) {
    for (let chunkFirst = 0; chunkFirst < end; chunkFirst += FAT_CHUNK / 4) {
      const n = Math.min(FAT_CHUNK / 4, end - chunkFirst);
      const buf = await readBytes(r, fatStart + chunkFirst * 4, n * 4);
      for (let i = Math.max(0, FIRST_CLUSTER - chunkFirst); i < n; i++) {
        // The top four bits are reserved and may be set even in a free entry.
        visit(chunkFirst + i, (buf.readUInt32LE(i * 4) & 0x0fffffff) !== 0);
      }
    }
  } else {
    // A FAT12/16 table is at most 128 KiB: one read.
    const buf = await readBytes(r, fatStart, Math.ceil((end * bits) / 8));
    for (let c = FIRST_CLUSTER; c < end; c++) visit(c, fatEntry(buf, c, bits) !== 0);
  }
  if (runStart >= 0) onRun(runStart, end - runStart);
}

function fatEntry(buf: Buffer, cluster: number, bits: number): number {
  if (bits === 16) return buf.readUInt16LE(cluster * 2);
  // FAT12 packs two entries in three bytes: even clusters take the low 12 bits of the pair.
  const pair = buf.readUInt16LE(Math.floor((cluster * 3) / 2));
  return cluster & 1 ? pair >> 4 : pair & 0x0fff;
}
