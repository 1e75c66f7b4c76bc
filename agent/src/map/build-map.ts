// The used-block map of a whole disk: every byte outside the partitions (tables, the
// bootloader gap, backup GPT), each partition's filesystem-used blocks, and whole partitions
// whose content is unknown (the encoder drops their all-zero clusters).
import { FilesystemError, PartitionTableError } from '../errors.js';
import { subReader, type ByteReader } from '../source/byte-reader.js';
import { complement, normalize, shift, totalLength, type Extent } from './extents.js';
import { probeFilesystem } from './filesystems/index.js';
import type { FsUsage } from './filesystems/types.js';
import type { Partition } from './partition.js';
import type { VolumeReport } from './volumes.js';
import { readPartitionTable } from './partition-table.js';

export interface PartitionReport extends Partition {
  fs: string | null;
  /** How the partition's used blocks were found ("ext4 block bitmaps", "whole partition", ...). */
  method: string;
  usedBytes: number;
  blockSize?: number;
  fsLabel?: string;
  fsUuid?: string;
}

export interface DiskMap {
  size: number;
  sectorSize: number;
  table: { type: 'gpt' | 'mbr' | 'none'; diskId?: string };
  partitions: PartitionReport[];
  /** Bytes outside every partition (tables, gaps), all kept. */
  outsideBytes: number;
  /** Absolute, normalized extents of everything to copy. */
  used: Extent[];
  usedBytes: number;
  /** Logical volumes mapped by their own filesystems (live capture of LVM; see volumes.ts). */
  volumes?: VolumeReport[];
  warnings: string[];
}

export async function buildDiskMap(r: ByteReader, deviceSectorSize = 512): Promise<DiskMap> {
  const probe = await readPartitionTable(r, deviceSectorSize);
  const warnings: string[] = [];
  let partitions: Partition[];
  let table: DiskMap['table'];
  let sectorSize: number;
  if (probe.kind === 'table') {
    ({ partitions } = probe.table);
    table = { type: probe.table.type, ...(probe.table.diskId ? { diskId: probe.table.diskId } : {}) };
    sectorSize = probe.table.sectorSize;
    warnings.push(...probe.table.warnings);
  } else {
    // No table: the whole disk may be one filesystem. A sector with 0x55AA and nonsense
    // entries is acceptable only if it is that filesystem's boot sector (FAT "superfloppy").
    sectorSize = probe.sectorSize;
    table = { type: 'none' };
    partitions = [{ index: 0, start: 0, size: r.size, type: 'whole-disk' }];
  }

  const reports: (PartitionReport & { used: Extent[] })[] = [];
  const used: Extent[] = [];
  for (const p of partitions) {
    const report = await mapPartition(r, p, warnings);
    if (probe.kind === 'implausible-mbr' && report.fs === null) {
      throw new PartitionTableError('corrupt MBR: the partition entries point outside the disk or are malformed');
    }
    reports.push(report);
    used.push(...report.used);
  }
  const outside = probe.kind === 'table' ? complement(normalize(partitions.map((p) => ({ offset: p.start, length: p.size }))), r.size) : [];
  const all = normalize([...used, ...outside]);
  return {
    size: r.size,
    sectorSize,
    table,
    partitions: reports.map(({ used: _used, ...rest }) => rest),
    outsideBytes: totalLength(outside),
    used: all,
    usedBytes: totalLength(all),
    warnings,
  };
}

async function mapPartition(r: ByteReader, p: Partition, warnings: string[]): Promise<PartitionReport & { used: Extent[] }> {
  const whole = (method: string) => ({ ...p, fs: null, method, usedBytes: p.size, used: [{ offset: p.start, length: p.size }] });
  if (p.copyWhole) return whole('whole partition (bootloader)');
  const part = subReader(r, p.start, p.size, `partition ${p.index}`);
  let usage: FsUsage | null;
  try {
    usage = await probeFilesystem(part);
  } catch (err) {
    // A filesystem whose metadata fails a check (absurd geometry, a checksum, counts that
    // disagree) has an allocation map we cannot trust: copying the whole partition is always
    // a faithful image, so that is what we do, and say why.
    if (!(err instanceof FilesystemError)) throw err;
    const where = p.index === 0 ? 'whole disk' : `partition ${p.index}`;
    warnings.push(`${where}: ${err.message}; copying the whole partition`);
    return whole(`whole partition (metadata failed checks: ${err.message})`);
  }
  if (!usage) {
    if (p.index !== 0) warnings.push(`partition ${p.index}: no known filesystem; copying its non-zero blocks`);
    else warnings.push('no partition table and no known filesystem; copying every non-zero block');
    return whole('whole partition (unknown content, zero blocks dropped)');
  }
  for (const w of usage.warnings ?? []) warnings.push(`partition ${p.index} (${usage.fs}): ${w}`);
  const abs = shift(usage.used, p.start);
  return {
    ...p,
    fs: usage.fs,
    method: usage.method,
    usedBytes: totalLength(usage.used),
    blockSize: usage.blockSize,
    ...(usage.label ? { fsLabel: usage.label } : {}),
    ...(usage.uuid ? { fsUuid: usage.uuid } : {}),
    used: abs,
  };
}
