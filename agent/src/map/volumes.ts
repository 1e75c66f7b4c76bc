// Logical volumes inside a partition (LVM): the partition's filesystem probe finds nothing (an
// LVM physical volume is not a filesystem), so the map keeps it whole. When the caller knows
// where a volume's extents lie on the disk and can read the volume (live capture: from its
// device-mapper snapshot), the volume's filesystem is mapped instead, and only its used blocks
// are kept; the rest of the partition (metadata, other volumes, free extents) stays whole.
import type { ByteReader } from '../source/byte-reader.js';
import type { DiskMap } from './build-map.js';
import { clip, normalize, shift, subtract, totalLength, type Extent } from './extents.js';
import { probeFilesystem } from './filesystems/index.js';

export interface VolumeSegment {
  /** Byte offset in the volume... */
  volumeOffset: number;
  /** ...of LENGTH bytes lying at this byte offset on the disk. */
  diskOffset: number;
  length: number;
}

export interface Volume {
  name: string;
  reader: ByteReader;
  segments: VolumeSegment[];
}

export interface VolumeReport {
  name: string;
  fs: string | null;
  method: string;
  size: number;
  usedBytes: number;
}

export async function mapVolumes(map: DiskMap, volumes: readonly Volume[]): Promise<DiskMap> {
  let used = map.used;
  const reports: VolumeReport[] = [];
  const warnings = [...map.warnings];
  for (const v of volumes) {
    const usage = await probeFilesystem(v.reader);
    if (!usage) {
      warnings.push(`volume ${v.name}: no known filesystem; copying its non-zero blocks`);
      reports.push({ name: v.name, fs: null, method: 'whole volume', size: v.reader.size, usedBytes: v.reader.size });
      continue;
    }
    for (const w of usage.warnings ?? []) warnings.push(`volume ${v.name} (${usage.fs}): ${w}`);
    const onDisk: Extent[] = v.segments.map((s) => ({ offset: s.diskOffset, length: s.length }));
    const mapped = v.segments.flatMap((s) => shift(clip(usage.used, s.volumeOffset, s.length), s.diskOffset - s.volumeOffset));
    used = normalize([...subtract(used, normalize(onDisk)), ...mapped]);
    reports.push({ name: v.name, fs: usage.fs, method: usage.method, size: v.reader.size, usedBytes: totalLength(usage.used) });
  }
  return { ...map, used, usedBytes: totalLength(used), volumes: [...(map.volumes ?? []), ...reports], warnings };
}
