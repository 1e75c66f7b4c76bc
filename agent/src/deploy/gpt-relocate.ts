// After a whole-disk image is written onto a larger disk, its GPT's backup copy sits where the
// image ended, not in the disk's last sectors: firmware and kernels complain, and partitioning
// tools refuse to use the space beyond. This moves the backup copy to the end and widens the
// usable range, the protective MBR with it (what `sgdisk -e` does, which ironic-python-agent
// runs after writing an image; the ramdisk carries no gdisk). Both copies are rewritten with
// fresh CRCs; the old backup header is wiped so that no stale table is ever found.
import type { FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { OutputError } from '../errors.js';
import type { ByteReader } from '../source/byte-reader.js';
import { hasGptSignature, readGptCopy } from '../map/gpt.js';

/** True when the disk had a GPT whose backup was moved to its end. */
export async function relocateBackupGpt(fh: FileHandle, what: string, sectorSize: number, diskSize: number): Promise<boolean> {
  const disk: ByteReader = {
    size: diskSize,
    async readExact(buf, position) { await fh.read(buf, 0, buf.length, position); },
  };
  if (!(await hasGptSignature(disk, sectorSize))) return false;
  const primary = await readGptCopy(disk, 1n, sectorSize);
  if (typeof primary === 'string') throw new OutputError(`the image was written to ${what}, but its GPT is unusable (${primary})`);
  const lastLba = BigInt(Math.floor(diskSize / sectorSize) - 1);
  const oldBackup = primary.header.backupLba;
  if (oldBackup === lastLba) return false;
  const ss = BigInt(sectorSize);
  const entrySectors = BigInt(Math.ceil(primary.entries.length / sectorSize));
  const backupEntries = lastLba - entrySectors;

  const head = await readSector(fh, 1n, ss);
  const size = head.readUInt32LE(12);
  head.writeBigUInt64LE(lastLba, 32);              // alternate (backup) LBA
  head.writeBigUInt64LE(backupEntries - 1n, 48);   // last usable LBA
  const back = Buffer.from(head);
  back.writeBigUInt64LE(lastLba, 24);              // my LBA
  back.writeBigUInt64LE(1n, 32);
  back.writeBigUInt64LE(backupEntries, 72);        // entry array LBA
  for (const h of [head, back]) { h.writeUInt32LE(0, 16); h.writeUInt32LE(crc32(h.subarray(0, size)), 16); }

  await writeAt(fh, primary.entries, backupEntries * ss);
  await writeAt(fh, back, lastLba * ss);
  await writeAt(fh, Buffer.alloc(sectorSize), oldBackup * ss);
  await writeAt(fh, head, ss);
  // the protective MBR's one partition (type 0xEE from LBA 1) covers the whole disk, capped at 32 bits
  const mbr = await readSector(fh, 0n, ss);
  if (mbr.readUInt16LE(510) === 0xaa55 && mbr[446 + 4] === 0xee && mbr.readUInt32LE(446 + 8) === 1) {
    mbr.writeUInt32LE(Number(lastLba > 0xffffffffn ? 0xffffffffn : lastLba), 446 + 12);
    await writeAt(fh, mbr, 0n);
  }
  await fh.sync();
  return true;
}

async function readSector(fh: FileHandle, lba: bigint, ss: bigint): Promise<Buffer> {
  const b = Buffer.alloc(Number(ss));
  await fh.read(b, 0, b.length, Number(lba * ss));
  return b;
}

async function writeAt(fh: FileHandle, buf: Buffer, offset: bigint): Promise<void> {
  const { bytesWritten } = await fh.write(buf, 0, buf.length, Number(offset));
  if (bytesWritten !== buf.length) throw new OutputError(`short write at byte ${offset}`);
}
