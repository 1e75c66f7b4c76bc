// FAT12/16/32 used-block map: everything before the first data cluster (boot sector, reserved
// sectors, every FAT copy, the FAT12/16 root directory) plus each data cluster whose entry in
// the active FAT is non-zero (allocated, end of chain, or marked bad).
//
// The FAT type follows the Linux kernel's rule: FAT32 when the 16-bit FAT size is zero,
// otherwise FAT12 up to 4084 clusters and FAT16 above.
//
// The FAT is the allocation map, so it is trusted only when it checks out; otherwise the probe
// throws FilesystemError and the partition is copied whole (cheap for an ESP, always faithful):
// - the boot sector's geometry is sane: power-of-two sizes, 1-4 FATs, root entries filling
//   whole sectors (the kernel's rule), a cluster count the FAT type can address, and a FAT that
//   holds an entry for every cluster without being much larger than that needs (mkfs.fat,
//   mformat and Windows size it to within a few sectors; a FAT twice too big is what a flipped
//   sectors-per-cluster looks like);
// - FAT32: the backup boot sector (BPB_BkBootSec) must carry the same geometry (bytes 11-63);
//   FAT12/16 have no backup, so every subdirectory in the root directory must start with its
//   "." and ".." entries where the geometry puts its cluster, at least one such anchor must
//   exist once any cluster is allocated, and each root-level file's chain must be as long as its
//   size needs (this pins the data area's start and the cluster size);
// - there are at least two FAT copies, mirrored (FAT32 may switch mirroring off: then there is
//   nothing to compare), identical over the cluster range. The kernel writes every copy and
//   dosfsck treats a difference as an error. One copy alone cannot show that an entry was
//   zeroed (a used cluster silently dropped from the map), so a single-FAT volume is copied
//   whole;
// - entry 0 holds the media byte with all other bits set, entry 1 an end-of-chain mark (the
//   clean/error flag bits aside);
// - every entry is free, a pointer to a cluster inside the cluster range, bad, or end of
//   chain: a value pointing elsewhere (1, past the last cluster, the reserved 0xFFF0 range)
//   means the table is not what the filesystem uses; entries past the last cluster are zero;
// - FAT32: the root directory's cluster is inside the cluster range and allocated.
// The FSInfo sector (free count, next free hint) is a hint the kernel itself may leave stale:
// it is not used.
import { FilesystemError } from '../../errors.js';
import { readBytes, type ByteReader } from '../../source/byte-reader.js';
import { normalize, type Extent } from '../extents.js';
import type { FsProbe, FsUsage } from './types.js';

const MAX_FAT12_CLUSTERS = 4084;
const MAX_FAT16_CLUSTERS = 65524;
const MAX_FAT32_CLUSTERS = 0x0ffffff5;
const FIRST_CLUSTER = 2;
/** FAT32 reads are chunked; a multiple of 4 so no entry straddles two chunks. */
const FAT_CHUNK = 4 << 20;
const DIR_ENTRY = 32;
const ATTR_DIR = 0x10;
const ATTR_VOLUME = 0x08;
const ATTR_LFN = 0x0f;

interface Bpb {
  bytesPerSector: number;
  sectorsPerCluster: number;
  reservedSectors: number;
  numFats: number;
  rootEntries: number;
  totalSectors: number;
  fatSectors: number;
  media: number;
  fat32: boolean;
  mirrored: boolean;
  activeFat: number;
  rootCluster: number;
  backupBoot: number;
  label: string;
  uuid?: string;
}

/** The values an entry of a FAT of this width may hold besides pointers. */
interface Marks {
  mask: number;
  bad: number;
  eocMin: number;
  /** Clean-shutdown and hard-error flags that may be cleared in entry 1. */
  entry1Flags: number;
}

function marksOf(bits: number): Marks {
  if (bits === 12) return { mask: 0xfff, bad: 0xff7, eocMin: 0xff8, entry1Flags: 0 };
  if (bits === 16) return { mask: 0xffff, bad: 0xfff7, eocMin: 0xfff8, entry1Flags: 0xc000 };
  return { mask: 0x0fffffff, bad: 0x0ffffff7, eocMin: 0x0ffffff8, entry1Flags: 0x0c000000 };
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
    if ((bpb.rootEntries * DIR_ENTRY) % bps !== 0) {
      throw new FilesystemError(`vfat: ${bpb.rootEntries} root directory entries do not fill whole ${bps}-byte sectors`);
    }
    const rootDirSectors = (bpb.rootEntries * DIR_ENTRY) / bps;
    const firstDataSector = bpb.reservedSectors + bpb.numFats * bpb.fatSectors + rootDirSectors;
    if (bpb.totalSectors * bps > r.size) {
      throw new FilesystemError(`vfat: boot sector claims ${bpb.totalSectors * bps} bytes but the partition holds ${r.size}`);
    }
    if (firstDataSector >= bpb.totalSectors) {
      throw new FilesystemError(`vfat: metadata (${firstDataSector} sectors) does not leave room for data in ${bpb.totalSectors} sectors`);
    }
    const clusters = Math.floor((bpb.totalSectors - firstDataSector) / bpb.sectorsPerCluster);
    if (clusters < 1) throw new FilesystemError(`vfat: no data cluster fits in ${bpb.totalSectors} sectors`);
    const bits = bpb.fat32 ? 32 : clusters <= MAX_FAT12_CLUSTERS ? 12 : 16;
    if (bpb.fat32 && bpb.rootEntries !== 0) throw new FilesystemError(`vfat: FAT32 boot sector with ${bpb.rootEntries} fixed root entries`);
    if (!bpb.fat32 && bpb.rootEntries === 0) throw new FilesystemError('vfat: FAT12/16 boot sector without root directory entries');
    const maxClusters = bits === 32 ? MAX_FAT32_CLUSTERS : bits === 16 ? MAX_FAT16_CLUSTERS : MAX_FAT12_CLUSTERS;
    if (clusters > maxClusters) throw new FilesystemError(`vfat: ${clusters} clusters is more than FAT${bits} can address`);

    const fatBytes = bpb.fatSectors * bps;
    const entriesInFat = Math.floor((fatBytes * 8) / bits);
    const neededSectors = Math.ceil(((clusters + FIRST_CLUSTER) * bits) / 8 / bps);
    if (entriesInFat < clusters + FIRST_CLUSTER) {
      throw new FilesystemError(`vfat: the FAT (${bpb.fatSectors} sectors) has entries for ${entriesInFat - FIRST_CLUSTER} of ${clusters} clusters`);
    }
    if (bpb.fatSectors > neededSectors + Math.floor(neededSectors / 8) + 8) {
      throw new FilesystemError(`vfat: the FAT (${bpb.fatSectors} sectors) is far larger than ${clusters} clusters need (${neededSectors})`);
    }
    if (bpb.numFats < 2) {
      throw new FilesystemError('vfat: a single FAT copy cannot be cross-checked');
    }
    if (!bpb.mirrored) {
      throw new FilesystemError(`vfat: FAT mirroring is off (only FAT ${bpb.activeFat + 1} is kept up to date), nothing to cross-check it with`);
    }
    if (bpb.fat32) await checkBackupBoot(r, boot, bpb);

    const dataStart = firstDataSector * bps;
    const used: Extent[] = [{ offset: 0, length: dataStart }];
    const fatStartOf = (k: number): number => (bpb.reservedSectors + k * bpb.fatSectors) * bps;
    const marks = marksOf(bits);
    const fat = await readFat(r, bpb, fatStartOf, fatBytes, bits, clusters, marks, (first, count) => {
      used.push({ offset: dataStart + (first - FIRST_CLUSTER) * clusterBytes, length: count * clusterBytes });
    });
    if (bpb.fat32) {
      const root = bpb.rootCluster;
      if (root < FIRST_CLUSTER || root >= clusters + FIRST_CLUSTER) throw new FilesystemError(`vfat: FAT32 root cluster ${root} is outside the ${clusters} data clusters`);
      if (fat.rootEntry === 0 || fat.rootEntry === marks.bad) {
        throw new FilesystemError(`vfat: FAT32 root directory cluster ${root} is marked ${fat.rootEntry === 0 ? 'free' : 'bad'} in the FAT`);
      }
      used.push({ offset: dataStart + (root - FIRST_CLUSTER) * clusterBytes, length: clusterBytes });
    } else {
      await checkRootDirectory(r, bpb, fat.table!, bits, clusters, marks, dataStart, clusterBytes, fat.allocated);
    }
    return {
      fs: 'vfat',
      used: normalize(used),
      blockSize: clusterBytes,
      method: `FAT table (FAT${bits})`,
      ...(bpb.label ? { label: bpb.label } : {}),
      ...(bpb.uuid ? { uuid: bpb.uuid } : {}),
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
  const mirrored = (extFlags & 0x80) === 0;
  const activeFat = mirrored ? 0 : extFlags & 0x0f;
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
    media,
    fat32,
    mirrored,
    activeFat,
    rootCluster: fat32 ? b.readUInt32LE(44) : 0,
    backupBoot: fat32 ? b.readUInt16LE(50) : 0,
    label: label === 'NO NAME' ? '' : label,
    ...(hasExtBpb ? { uuid: `${hex(id >>> 16)}-${hex(id & 0xffff)}` } : {}),
  };
}

/** FAT32: the backup boot sector must exist inside the reserved area and match the geometry. */
async function checkBackupBoot(r: ByteReader, boot: Buffer, bpb: Bpb): Promise<void> {
  const at = bpb.backupBoot;
  if (at === 0 || at === 0xffff) throw new FilesystemError('vfat: FAT32 without a backup boot sector to check the geometry against');
  if (at >= bpb.reservedSectors) throw new FilesystemError(`vfat: backup boot sector ${at} lies outside the ${bpb.reservedSectors} reserved sectors`);
  const backup = await readBytes(r, at * bpb.bytesPerSector, 512);
  for (let i = 11; i < 64; i++) {
    if (backup[i] !== boot[i]) throw new FilesystemError(`vfat: boot sector and its backup (sector ${at}) differ at byte ${i}`);
  }
}

interface FatScan {
  /** FAT12/16: the active FAT's cluster range (entries 0..clusters+1), for the root checks. */
  table?: Buffer;
  /** FAT32: the root directory cluster's entry. */
  rootEntry: number;
  /** Whether any data cluster is in use. */
  allocated: boolean;
}

/**
 * Reads every FAT copy, checks them against each other and each entry's value, and calls
 * `onRun(firstCluster, count)` for every run of clusters with non-zero entries.
 */
async function readFat(
  r: ByteReader,
  bpb: Bpb,
  fatStartOf: (k: number) => number,
  fatBytes: number,
  bits: number,
  clusters: number,
  marks: Marks,
  onRun: (first: number, count: number) => void,
): Promise<FatScan> {
  const end = FIRST_CLUSTER + clusters;
  // The bytes holding entries 0..end-1 (a FAT12 table's last byte may hold half the next one).
  const rangeBytes = Math.ceil((end * bits) / 8);
  const chunk = bits === 32 ? FAT_CHUNK : fatBytes;
  const scan: FatScan = { rootEntry: 0, allocated: false };
  let runStart = -1;
  const bad = (what: string): never => {
    throw new FilesystemError(`vfat: FAT ${bpb.activeFat + 1} ${what}`);
  };
  for (let pos = 0; pos < fatBytes; pos += chunk) {
    const n = Math.min(chunk, fatBytes - pos);
    const active = await readBytes(r, fatStartOf(bpb.activeFat) + pos, n);
    const compareTo = Math.min(n, rangeBytes - pos);
    for (let k = 0; k < bpb.numFats && compareTo > 0; k++) {
      if (k === bpb.activeFat) continue;
      const other = await readBytes(r, fatStartOf(k) + pos, compareTo);
      const diff = firstDifference(active, other, compareTo);
      if (diff >= 0) {
        const entry = Math.floor(((pos + diff) * 8) / bits);
        throw new FilesystemError(`vfat: FAT copies ${bpb.activeFat + 1} and ${k + 1} differ at entry ${entry}`);
      }
    }
    if (bits !== 32) scan.table = active;
    const firstEntry = Math.floor((pos * 8) / bits);
    const lastEntry = Math.floor(((pos + n) * 8) / bits); // exclusive
    for (let c = firstEntry; c < lastEntry; c++) {
      const v = entryAt(active, c - firstEntry, bits) & marks.mask;
      if (c === 0) {
        if (v !== ((marks.mask & ~0xff) | bpb.media)) bad(`entry 0 is 0x${v.toString(16)}, not the media byte 0x${bpb.media.toString(16)} with the other bits set`);
        continue;
      }
      if (c === 1) {
        if ((v | marks.entry1Flags) < marks.eocMin) bad(`entry 1 is 0x${v.toString(16)}, not an end-of-chain mark`);
        continue;
      }
      if (c >= end) {
        if (v !== 0) bad(`has entry ${c} = 0x${v.toString(16)} past the last cluster (${end - 1})`);
        continue;
      }
      if (v !== 0 && v < marks.bad && (v < FIRST_CLUSTER || v >= end)) {
        bad(`entry ${c} points to cluster ${v}, outside the cluster range 2-${end - 1}`);
      }
      if (c === bpb.rootCluster) scan.rootEntry = v;
      const inUse = v !== 0;
      if (inUse) scan.allocated = true;
      if (inUse && runStart < 0) runStart = c;
      else if (!inUse && runStart >= 0) {
        onRun(runStart, c - runStart);
        runStart = -1;
      }
    }
  }
  if (runStart >= 0) onRun(runStart, end - runStart);
  return scan;
}

function firstDifference(a: Buffer, b: Buffer, n: number): number {
  if (a.subarray(0, n).equals(b.subarray(0, n))) return -1;
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Entry I of a buffer that starts at an entry boundary (FAT12/16: the whole table). */
function entryAt(buf: Buffer, i: number, bits: number): number {
  if (bits === 32) return buf.readUInt32LE(i * 4);
  if (bits === 16) return buf.readUInt16LE(i * 2);
  // FAT12 packs two entries in three bytes: even clusters take the low 12 bits of the pair.
  const o = Math.floor((i * 3) / 2);
  const pair = buf[o]! | ((buf[o + 1] ?? 0) << 8);
  return i & 1 ? pair >> 4 : pair & 0x0fff;
}

/**
 * FAT12/16: the root directory ties the geometry to the data area. Each subdirectory's first
 * cluster must begin with "." (naming that cluster) and ".." (the root), and each file's chain
 * must run through allocated clusters and be exactly as long as its size needs.
 */
async function checkRootDirectory(
  r: ByteReader,
  bpb: Bpb,
  table: Buffer,
  bits: number,
  clusters: number,
  marks: Marks,
  dataStart: number,
  clusterBytes: number,
  allocated: boolean,
): Promise<void> {
  const rootStart = (bpb.reservedSectors + bpb.numFats * bpb.fatSectors) * bpb.bytesPerSector;
  const root = await readBytes(r, rootStart, bpb.rootEntries * DIR_ENTRY);
  const end = FIRST_CLUSTER + clusters;
  const fail = (what: string): never => {
    throw new FilesystemError(`vfat: root directory ${what}`);
  };
  let anchors = 0;
  for (let o = 0; o < root.length; o += DIR_ENTRY) {
    const first = root[o]!;
    if (first === 0) break;
    const attr = root[o + 11]!;
    if (first === 0xe5 || attr === ATTR_LFN || attr & ATTR_VOLUME) continue;
    const name = root.toString('latin1', o, o + 11);
    if (first === 0x2e) fail(`holds a "${name.trim()}" entry`);
    const start = root.readUInt16LE(o + 26);
    const size = root.readUInt32LE(o + 28);
    if (start === 0) {
      if (attr & ATTR_DIR) fail(`entry "${name.trim()}" is a directory without a cluster`);
      continue;
    }
    if (start < FIRST_CLUSTER || start >= end) fail(`entry "${name.trim()}" starts at cluster ${start}, outside 2-${end - 1}`);
    // Follow the chain: allocated clusters only, and no longer than the volume (a loop).
    let length = 0;
    for (let c = start; ; ) {
      const v = entryAt(table, c, bits) & marks.mask;
      if (v === 0 || v === marks.bad) fail(`entry "${name.trim()}": its chain reaches cluster ${c}, marked ${v === 0 ? 'free' : 'bad'}`);
      if (++length > clusters) fail(`entry "${name.trim()}": its chain loops`);
      if (v >= marks.eocMin) break;
      c = v;
    }
    if (attr & ATTR_DIR) {
      const dir = await readBytes(r, dataStart + (start - FIRST_CLUSTER) * clusterBytes, 2 * DIR_ENTRY);
      const dot = dir.toString('latin1', 0, 11) === '.          ' && dir[11]! & ATTR_DIR && dir.readUInt16LE(26) === start;
      const dotdot = dir.toString('latin1', 32, 43) === '..         ' && dir[43]! & ATTR_DIR && dir.readUInt16LE(58) === 0;
      if (!dot || !dotdot) fail(`entry "${name.trim()}": cluster ${start} does not start with its "." and ".." entries`);
      anchors++;
    } else if (length !== Math.ceil(size / clusterBytes)) {
      fail(`entry "${name.trim()}": ${size} bytes in a chain of ${length} clusters of ${clusterBytes} bytes`);
    }
  }
  if (allocated && anchors === 0) {
    throw new FilesystemError('vfat: no subdirectory in the root directory to check the data area\'s position against');
  }
}
