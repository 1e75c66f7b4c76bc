// Finds and reads the disk's partition table: GPT (at 512- or 4096-byte sectors), else MBR,
// else none (a filesystem on the whole disk, or something unknown).
//
// Damage must end in the right partitions or a PartitionTableError, never in partitions at the
// wrong place (their filesystems would be mapped there). The GPT signature at LBA 1 is looked
// for first, so a damaged protective MBR (its 0xEE byte, its 0x55AA) does not matter while the
// primary header is there; a protective MBR whose header lost its signature sends the GPT reader
// to the backup. Were both damaged, the disk reads as "no table" (copied whole), or as an MBR
// whose one entry runs from LBA 1 to the end (everything after sector 0 is one partition with
// no known filesystem: copied whole). A stale backup GPT is never preferred to a plausible MBR:
// the MBR may be the newer table. buildDiskMap copies every byte outside the partitions, so a
// shorter list is safe; gpt.ts and mbr.ts refuse lists that overlap or cover the table itself.
import { readBytes, type ByteReader } from '../source/byte-reader.js';
import { hasGptSignature, readGpt } from './gpt.js';
import { hasMbrSignature, plausibleMbr, readMbr } from './mbr.js';
import type { PartitionTable } from './partition.js';

export type TableProbe =
  | { kind: 'table'; table: PartitionTable }
  /** 0x55AA but entries that make no sense: a boot sector, or a corrupt MBR. */
  | { kind: 'implausible-mbr'; sectorSize: number }
  | { kind: 'none'; sectorSize: number };

export async function readPartitionTable(r: ByteReader, deviceSectorSize: number): Promise<TableProbe> {
  const sizes = deviceSectorSize === 512 ? [512, 4096] : [deviceSectorSize];
  const sector0 = await readBytes(r, 0, Math.min(r.size, 512));
  for (const ss of sizes) {
    if (await hasGptSignature(r, ss)) return { kind: 'table', table: await readGpt(r, ss) };
  }
  const ss = sizes[0]!;
  if (sector0.length === 512 && hasMbrSignature(sector0)) {
    // A protective MBR whose GPT header lost its signature: let the GPT reader try the backup.
    if (protectiveMbr(sector0)) return { kind: 'table', table: await readGpt(r, ss) };
    if (plausibleMbr(sector0, Math.floor(r.size / ss))) return { kind: 'table', table: await readMbr(r, ss) };
    return { kind: 'implausible-mbr', sectorSize: ss };
  }
  return { kind: 'none', sectorSize: ss };
}

function protectiveMbr(sector0: Buffer): boolean {
  for (let i = 0; i < 4; i++) if (sector0[446 + i * 16 + 4] === 0xee) return true;
  return false;
}
