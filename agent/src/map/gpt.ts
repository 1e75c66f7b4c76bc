// GUID Partition Table reader (UEFI spec, chapter 5): primary header at LBA 1, backup header at
// the last LBA, both CRC32-protected along with their entry arrays. A table is trusted only when
// a header and its entry array check out; one bad copy is a warning, two are an error.
// A copy whose CRCs hold is still checked for sense, since a wrong partition list would map a
// filesystem at the wrong place: the header must sit where it says and point to an entry array
// inside the disk; the usable range must fit the disk and leave out the protective MBR, both
// headers and the entry arrays of the copies that checked out (a partition covering the GPT
// itself would let a filesystem map drop the table from the image); every partition must lie in
// the usable range, and no two may overlap. Anything else is a PartitionTableError (one line).
import { crc32 } from 'node:zlib';
import { PartitionTableError } from '../errors.js';
import { readBytes, type ByteReader } from '../source/byte-reader.js';
import type { Partition, PartitionTable } from './partition.js';

const SIGNATURE = 'EFI PART';

// The types that matter for imaging decisions or reports.
const TYPE_NAMES: Record<string, string> = {
  '21686148-6449-6e6f-744e-656564454649': 'BIOS boot',
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'EFI System',
  '0fc63daf-8483-4772-8e79-3d69d8477de4': 'Linux filesystem',
  '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': 'Linux root (x86-64)',
  'bc13c2ff-59e6-4262-a352-b275fd6f7172': 'Linux extended boot',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'Linux swap',
  'e6d6d379-f507-44c2-a23c-238f2a3df928': 'Linux LVM',
  'a19d880f-05fc-4d3b-a006-743f0f84911e': 'Linux RAID',
  'ca7d7ccb-63ed-4c53-861c-1742536059cc': 'Linux LUKS',
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': 'Microsoft basic data',
  '6a898cc3-1dd2-11b2-99a6-080020736631': 'ZFS',
};
const BIOS_BOOT = '21686148-6449-6e6f-744e-656564454649';

interface Header {
  currentLba: bigint;
  backupLba: bigint;
  firstUsable: bigint;
  lastUsable: bigint;
  diskGuid: string;
  entriesLba: bigint;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

export function formatGuid(b: Uint8Array): string {
  const h = Buffer.from(b).toString('hex');
  const le = (s: string) => s.match(/../g)!.reverse().join('');
  return `${le(h.slice(0, 8))}-${le(h.slice(8, 12))}-${le(h.slice(12, 16))}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** True when LBA 1 (at this sector size) carries the GPT signature, valid or not. */
export async function hasGptSignature(r: ByteReader, sectorSize: number): Promise<boolean> {
  if (r.size < sectorSize * 2) return false;
  const lba1 = await readBytes(r, sectorSize, 8);
  return lba1.toString('latin1') === SIGNATURE;
}

function parseHeader(buf: Buffer): Header | string {
  if (buf.toString('latin1', 0, 8) !== SIGNATURE) return 'no signature';
  const headerSize = buf.readUInt32LE(12);
  if (headerSize < 92 || headerSize > buf.length) return `header size ${headerSize} out of range`;
  const copy = Buffer.from(buf.subarray(0, headerSize));
  const stored = copy.readUInt32LE(16);
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== stored) return 'header CRC mismatch';
  const entrySize = buf.readUInt32LE(84);
  const entryCount = buf.readUInt32LE(80);
  if (entrySize < 128 || entrySize % 8 !== 0 || entrySize > 4096) return `entry size ${entrySize} invalid`;
  if (entryCount > 16384) return `entry count ${entryCount} invalid`;
  return {
    currentLba: buf.readBigUInt64LE(24),
    backupLba: buf.readBigUInt64LE(32),
    firstUsable: buf.readBigUInt64LE(40),
    lastUsable: buf.readBigUInt64LE(48),
    diskGuid: formatGuid(buf.subarray(56, 72)),
    entriesLba: buf.readBigUInt64LE(72),
    entryCount,
    entrySize,
    entriesCrc: buf.readUInt32LE(88),
  };
}

/** One copy of the table (header at LBA), checked, with its entry array; or why it is unusable. */
export async function readGptCopy(r: ByteReader, lba: bigint, ss: number): Promise<{ header: Header; entries: Buffer } | string> {
  const lastLba = BigInt(Math.floor(r.size / ss) - 1);
  if (lba < 1n || lba > lastLba) return `header LBA ${lba} outside the disk`;
  const header = parseHeader(await readBytes(r, Number(lba) * ss, ss));
  if (typeof header === 'string') return header;
  if (header.currentLba !== lba) return `header says it is at LBA ${header.currentLba}, found at ${lba}`;
  const bytes = header.entryCount * header.entrySize;
  const entriesEnd = header.entriesLba * BigInt(ss) + BigInt(bytes);
  if (header.entriesLba < 2n || entriesEnd > BigInt(r.size)) return 'entry array outside the disk';
  const entries = await readBytes(r, Number(header.entriesLba) * ss, bytes);
  if (crc32(entries) !== header.entriesCrc) return 'entry array CRC mismatch';
  return { header, entries };
}

export async function readGpt(r: ByteReader, ss: number): Promise<PartitionTable> {
  const warnings: string[] = [];
  const primary = await readGptCopy(r, 1n, ss);
  let chosen = typeof primary === 'string' ? undefined : primary;
  // The backup lives where the primary says, or failing that at the last LBA.
  const backupLba = chosen ? chosen.header.backupLba : BigInt(Math.floor(r.size / ss) - 1);
  const backup = await readGptCopy(r, backupLba, ss);
  if (!chosen) {
    if (typeof backup === 'string') {
      throw new PartitionTableError(`corrupt GPT: primary header (${primary}) and backup header (${backup}) are both unusable`);
    }
    warnings.push(`primary GPT unusable (${primary as string}); using the backup copy`);
    chosen = backup;
  } else if (typeof backup === 'string') {
    warnings.push(`backup GPT unusable (${backup}); using the primary copy`);
  }
  const { header, entries } = chosen;
  const totalSectors = BigInt(Math.floor(r.size / ss));
  if (header.lastUsable >= totalSectors || header.firstUsable > header.lastUsable || header.firstUsable < 2n) {
    throw new PartitionTableError(`corrupt GPT: usable range ${header.firstUsable}-${header.lastUsable} does not fit a disk of ${totalSectors} sectors`);
  }
  // The table's own sectors (protective MBR, headers, entry arrays) must lie outside the usable range.
  const own: [string, bigint, bigint][] = [['protective MBR', 0n, 0n]];
  for (const [what, copy] of [['primary', primary], ['backup', backup]] as const) {
    if (typeof copy === 'string') continue;
    const h = copy.header;
    own.push([`${what} header`, h.currentLba, h.currentLba]);
    const sectors = BigInt(Math.ceil((h.entryCount * h.entrySize) / ss));
    if (sectors > 0n) own.push([`${what} entry array`, h.entriesLba, h.entriesLba + sectors - 1n]);
  }
  for (const [what, first, last] of own) {
    if (first <= header.lastUsable && last >= header.firstUsable) {
      throw new PartitionTableError(`corrupt GPT: the usable range ${header.firstUsable}-${header.lastUsable} covers the ${what} (sectors ${first}-${last})`);
    }
  }
  const partitions: Partition[] = [];
  for (let i = 0; i < header.entryCount; i++) {
    const e = entries.subarray(i * header.entrySize, (i + 1) * header.entrySize);
    const type = formatGuid(e.subarray(0, 16));
    if (type === '00000000-0000-0000-0000-000000000000') continue;
    const first = e.readBigUInt64LE(32);
    const last = e.readBigUInt64LE(40);
    if (first > last || first < header.firstUsable || last > header.lastUsable) {
      throw new PartitionTableError(`corrupt GPT: partition ${i + 1} spans sectors ${first}-${last}, outside the usable range ${header.firstUsable}-${header.lastUsable}`);
    }
    const name = e.subarray(56, 128).toString('utf16le').replace(/\0.*$/s, '');
    const typeName = TYPE_NAMES[type];
    partitions.push({
      index: i + 1,
      start: Number(first) * ss,
      size: Number(last - first + 1n) * ss,
      type,
      ...(typeName ? { typeName } : {}),
      ...(name ? { name } : {}),
      uuid: formatGuid(e.subarray(16, 32)),
      ...(type === BIOS_BOOT ? { copyWhole: true } : {}),
    });
  }
  checkOverlaps(partitions, 'GPT');
  return { type: 'gpt', sectorSize: ss, diskId: header.diskGuid, partitions, warnings };
}

export function checkOverlaps(partitions: readonly Partition[], what: string): void {
  const sorted = [...partitions].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.start < prev.start + prev.size) {
      throw new PartitionTableError(`corrupt ${what}: partitions ${prev.index} and ${cur.index} overlap`);
    }
  }
}
