// MBR (DOS) partition table reader: four primary entries at byte 446 and, for an extended
// partition, the chain of extended boot records (EBRs) that each describe one logical partition.
// Nothing in an MBR is checksummed, so what is checked is sense: boot flags 0x00/0x80, entries
// inside the disk and not at sector 0, one extended partition, an EBR chain that stays inside
// the extended partition, carries 0x55AA in every record, has only extended-type links and does
// not loop; logical partitions inside the extended partition; no two partitions overlapping, and
// no partition covering an EBR (the image keeps the table's sectors only because they lie
// outside every partition). Anything else is a PartitionTableError (one line).
import { PartitionTableError } from '../errors.js';
import { readBytes, type ByteReader } from '../source/byte-reader.js';
import { checkOverlaps } from './gpt.js';
import type { Partition, PartitionTable } from './partition.js';

const EXTENDED = new Set([0x05, 0x0f, 0x85]);
const TYPE_NAMES: Record<number, string> = {
  0x01: 'FAT12', 0x04: 'FAT16 <32M', 0x06: 'FAT16', 0x07: 'NTFS/exFAT', 0x0b: 'W95 FAT32',
  0x0c: 'W95 FAT32 (LBA)', 0x0e: 'W95 FAT16 (LBA)', 0x82: 'Linux swap', 0x83: 'Linux',
  0x8e: 'Linux LVM', 0xef: 'EFI System', 0xfd: 'Linux RAID', 0xee: 'GPT protective',
};
const MAX_LOGICAL = 128;

interface RawEntry { status: number; type: number; startLba: number; sectors: number }

function entriesOf(sector: Buffer): RawEntry[] {
  const out: RawEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + i * 16;
    out.push({
      status: sector[o]!,
      type: sector[o + 4]!,
      startLba: sector.readUInt32LE(o + 8),
      sectors: sector.readUInt32LE(o + 12),
    });
  }
  return out;
}

export function hasMbrSignature(sector0: Buffer): boolean {
  return sector0[510] === 0x55 && sector0[511] === 0xaa;
}

/** True if the four primary entries look like a partition table (not a boot sector's code). */
export function plausibleMbr(sector0: Buffer, diskSectors: number): boolean {
  const used = entriesOf(sector0).filter((e) => e.type !== 0);
  if (used.length === 0) return false;
  return used.every((e) => (e.status === 0 || e.status === 0x80) && e.startLba > 0 && e.sectors > 0 && e.startLba + e.sectors <= diskSectors);
}

function partitionOf(index: number, e: RawEntry, base: number, ss: number): Partition {
  const typeName = TYPE_NAMES[e.type];
  return {
    index,
    start: (base + e.startLba) * ss,
    size: e.sectors * ss,
    type: `0x${e.type.toString(16).padStart(2, '0')}`,
    ...(typeName ? { typeName } : {}),
  };
}

export async function readMbr(r: ByteReader, ss: number): Promise<PartitionTable> {
  const sector0 = await readBytes(r, 0, ss);
  const diskSectors = Math.floor(r.size / ss);
  const partitions: Partition[] = [];
  const warnings: string[] = [];
  const primaries = entriesOf(sector0);
  let extended: { start: number; sectors: number } | undefined;
  primaries.forEach((e, i) => {
    if (e.type === 0) return;
    if (e.status !== 0 && e.status !== 0x80) throw new PartitionTableError(`corrupt MBR: entry ${i + 1} has boot flag 0x${e.status.toString(16)}`);
    if (e.sectors === 0 || e.startLba === 0 || e.startLba + e.sectors > diskSectors) {
      throw new PartitionTableError(`corrupt MBR: partition ${i + 1} (sectors ${e.startLba}+${e.sectors}) lies outside the disk (${diskSectors} sectors)`);
    }
    if (EXTENDED.has(e.type)) {
      if (extended) throw new PartitionTableError('corrupt MBR: more than one extended partition');
      extended = { start: e.startLba, sectors: e.sectors };
    } else {
      partitions.push(partitionOf(i + 1, e, 0, ss));
    }
  });
  if (extended) {
    const { logicals, ebrs } = await readLogicals(r, ss, extended);
    partitions.push(...logicals);
    for (const ebr of ebrs) {
      const p = partitions.find((x) => x.start <= ebr * ss && ebr * ss < x.start + x.size);
      if (p) throw new PartitionTableError(`corrupt MBR: partition ${p.index} covers the extended boot record at sector ${ebr}`);
    }
  }
  checkOverlaps(partitions, 'MBR');
  return { type: 'mbr', sectorSize: ss, diskId: sector0.readUInt32LE(440).toString(16).padStart(8, '0'), partitions, warnings };
}

async function readLogicals(r: ByteReader, ss: number, ext: { start: number; sectors: number }): Promise<{ logicals: Partition[]; ebrs: number[] }> {
  const out: Partition[] = [];
  const seen = new Set<number>();
  let ebr = ext.start;
  for (let n = 0; ; n++) {
    if (n >= MAX_LOGICAL || seen.has(ebr)) throw new PartitionTableError('corrupt MBR: the extended partition chain loops');
    seen.add(ebr);
    if (ebr < ext.start || ebr >= ext.start + ext.sectors) throw new PartitionTableError(`corrupt MBR: extended boot record at sector ${ebr} lies outside the extended partition`);
    const sector = await readBytes(r, ebr * ss, ss);
    if (!hasMbrSignature(sector)) throw new PartitionTableError(`corrupt MBR: extended boot record at sector ${ebr} has no 0x55AA signature`);
    const [logical, next] = entriesOf(sector) as [RawEntry, RawEntry];
    if (logical.type !== 0 && logical.sectors > 0) {
      const p = partitionOf(5 + out.length, logical, ebr, ss);
      if (p.start / ss + logical.sectors > ext.start + ext.sectors) {
        throw new PartitionTableError(`corrupt MBR: logical partition ${p.index} extends past the extended partition`);
      }
      out.push(p);
    }
    if (next.type === 0 || next.sectors === 0) break;
    if (!EXTENDED.has(next.type)) throw new PartitionTableError(`corrupt MBR: unexpected type 0x${next.type.toString(16)} in the extended partition chain`);
    ebr = ext.start + next.startLba;
  }
  return { logicals: out, ebrs: [...seen] };
}
