// Verifiers for bmsnap output: qcow2 health, partition tables and verbatim regions, block-level
// comparison, filesystem checks and canonical digests of whole filesystem trees.
// Every verifier reports what differs rather than throwing, so tests can show it; each must be
// able to fail (test/e2e/harness.test.ts proves it on deliberately corrupted copies).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, open, readdir, readlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import {
  GPT_BIOS_BOOT, detectFs, findPartition, isExtendedContainer, makeTempDir, removeTempDir,
  readOnlyMountOptions, readPartitionTable, run, runUnchecked, sizeOf, withMount, withReadOnlyWindow,
  type FsType, type PartitionEntry,
} from './disks.js';

const SECTOR = 512;
const CHUNK = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Hashes

export async function hashFile(path: string, algorithm: 'sha256' | 'sha512' | 'md5'): Promise<string> {
  const hash = createHash(algorithm);
  for await (const chunk of createReadStream(path, { highWaterMark: CHUNK })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export function sha256File(path: string): Promise<string> {
  return hashFile(path, 'sha256');
}

// ---------------------------------------------------------------------------------------------
// qemu-img

export interface QemuCheck {
  clean: boolean;
  exitCode: number;
  /** Parsed `qemu-img check --output=json` (null when qemu-img printed no JSON). */
  report: Record<string, unknown> | null;
  stderr: string;
}

/** `qemu-img check`: clean means exit 0, and no corruptions, leaks or check errors. */
export async function qemuImgCheck(image: string): Promise<QemuCheck> {
  const r = await runUnchecked('qemu-img', ['check', '--output=json', '-f', 'qcow2', image]);
  let report: Record<string, unknown> | null = null;
  try {
    report = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    report = null;
  }
  const zero = (k: string) => report !== null && (report[k] === undefined || report[k] === 0);
  const clean = r.exitCode === 0 && report !== null && zero('corruptions') && zero('leaks') && zero('check-errors');
  return { clean, exitCode: r.exitCode, report, stderr: r.stderr };
}

export async function qemuImgInfo(image: string): Promise<Record<string, unknown> & { format: string; 'virtual-size': number }> {
  return JSON.parse(await run('qemu-img', ['info', '--output=json', image])) as Record<string, unknown> & { format: string; 'virtual-size': number };
}

export async function convertToRaw(qcow2: string, raw: string): Promise<void> {
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', qcow2, raw]);
}

// ---------------------------------------------------------------------------------------------
// Byte ranges

async function readRange(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) break; // past EOF reads as zeros
    done += bytesRead;
  }
  return buf;
}

export interface Region {
  name: string;
  offset: number;
  length: number;
}

export interface RegionMismatch {
  region: string;
  /** First differing byte, absolute. */
  offset: number;
  detail: string;
}

/** Compares REGIONS of A and B byte for byte; returns the first difference in each region. */
export async function compareRegions(a: string, b: string, regions: Region[]): Promise<RegionMismatch[]> {
  const fa = await open(a, 'r');
  const fb = await open(b, 'r');
  const mismatches: RegionMismatch[] = [];
  try {
    for (const region of regions) {
      for (let off = region.offset; off < region.offset + region.length; off += CHUNK) {
        const len = Math.min(CHUNK, region.offset + region.length - off);
        const [x, y] = [await readRange(fa, off, len), await readRange(fb, off, len)];
        if (x.equals(y)) continue;
        let i = 0;
        while (x[i] === y[i]) i++;
        mismatches.push({ region: region.name, offset: off + i, detail: `byte ${off + i}: ${x[i]} != ${y[i]}` });
        break;
      }
    }
  } finally {
    await fa.close();
    await fb.close();
  }
  return mismatches;
}

// ---------------------------------------------------------------------------------------------
// Partition tables and the regions a snapshot must copy verbatim

function gptHeaderFields(h: Buffer): { backupLba: number; entriesLba: number; entries: number; entrySize: number } | null {
  if (h.subarray(0, 8).toString('latin1') !== 'EFI PART') return null;
  return {
    backupLba: Number(h.readBigUInt64LE(32)),
    entriesLba: Number(h.readBigUInt64LE(72)),
    entries: h.readUInt32LE(80),
    entrySize: h.readUInt32LE(84),
  };
}

/** Backup GPT: its entry array and header (from the primary header's pointers). */
async function gptBackupRegion(fh: FileHandle): Promise<Region[]> {
  const primary = gptHeaderFields(await readRange(fh, SECTOR, SECTOR));
  if (!primary) throw new Error('source has no valid primary GPT header');
  const backup = gptHeaderFields(await readRange(fh, primary.backupLba * SECTOR, SECTOR));
  if (!backup) throw new Error(`source has no backup GPT header at LBA ${primary.backupLba}`);
  const start = backup.entriesLba * SECTOR;
  return [{ name: 'backup GPT entries + header', offset: start, length: (primary.backupLba + 1) * SECTOR - start }];
}

/** Each EBR of an MBR extended partition (the logical partitions' chain). */
async function ebrRegions(fh: FileHandle, extendedStart: number): Promise<Region[]> {
  const regions: Region[] = [];
  let ebr = extendedStart;
  for (let n = 0; n < 128; n++) {
    regions.push({ name: `EBR #${n} at byte ${ebr}`, offset: ebr, length: SECTOR });
    const sector = await readRange(fh, ebr, SECTOR);
    if (sector.readUInt16LE(510) !== 0xaa55) break;
    const next = sector.readUInt32LE(446 + 16 + 8);
    if (next === 0 || sector[446 + 16 + 4] === 0) break;
    ebr = extendedStart + next * SECTOR;
  }
  return regions;
}

/**
 * Regions of SRC that a snapshot must reproduce byte for byte: everything before the first
 * partition (MBR/protective MBR, GPT header and entries, bootloader gap), the backup GPT, the EBR
 * chain, BIOS boot partitions, and partitions holding no recognizable filesystem.
 */
export async function verbatimRegions(src: string): Promise<Region[]> {
  const table = await readPartitionTable(src);
  if (table.label === null) return [];
  const regions: Region[] = [];
  const firstStart = Math.min(...table.partitions.map((p) => p.start));
  regions.push({ name: 'partition table + gap before the first partition', offset: 0, length: firstStart });
  const fh = await open(src, 'r');
  try {
    if (table.label === 'gpt') regions.push(...(await gptBackupRegion(fh)));
    for (const p of table.partitions) {
      if (isExtendedContainer(table, p)) regions.push(...(await ebrRegions(fh, p.start)));
      else if (p.type === GPT_BIOS_BOOT) regions.push({ name: `partition ${p.index} (BIOS boot)`, offset: p.start, length: p.size });
      else if ((await detectFs(src, p.start, p.size)) === null) regions.push({ name: `partition ${p.index} (no filesystem)`, offset: p.start, length: p.size });
    }
  } finally {
    await fh.close();
  }
  return regions;
}

/**
 * Partition tables (GPT primary + backup, or MBR + EBR chain), the gap before the first partition,
 * BIOS boot partitions and partitions without a filesystem must be identical; so must the sizes.
 * Returns the differences (empty = identical).
 */
export async function comparePartitionTables(srcRaw: string, outRaw: string): Promise<RegionMismatch[]> {
  const [a, b] = [await sizeOf(srcRaw), await sizeOf(outRaw)];
  if (a !== b) return [{ region: 'disk size', offset: Math.min(a, b), detail: `size ${a} != ${b}` }];
  return compareRegions(srcRaw, outRaw, await verbatimRegions(srcRaw));
}

// ---------------------------------------------------------------------------------------------
// Block-level comparison

export interface BlockComparison {
  blockSize: number;
  /** Bytes in blocks identical in both. */
  identicalBytes: number;
  /** Bytes in blocks that are non-zero in SRC and all zeros in OUT (dropped as unused). */
  zeroedBytes: number;
  /** Bytes in blocks that differ otherwise (must be 0: neither copied nor zeroed). */
  mismatchedBytes: number;
  srcNonZeroBytes: number;
  outNonZeroBytes: number;
  /** The first few mismatching block offsets. */
  firstMismatches: number[];
}

/**
 * Every BLOCKSIZE block (default: a sector, as FAT clusters and ext4 blocks can be 512/1024 bytes)
 * of OUT must either equal SRC's or be all zeros: a snapshot copies used
 * blocks and zeroes unused ones, and never writes anything else.
 */
export async function compareBlocks(src: string, out: string, blockSize = 512): Promise<BlockComparison> {
  const size = await sizeOf(src);
  if ((await sizeOf(out)) !== size) throw new Error(`sizes differ: ${src} ${size}, ${out} ${await sizeOf(out)}`);
  const zero = Buffer.alloc(blockSize);
  const c: BlockComparison = { blockSize, identicalBytes: 0, zeroedBytes: 0, mismatchedBytes: 0, srcNonZeroBytes: 0, outNonZeroBytes: 0, firstMismatches: [] };
  const fa = await open(src, 'r');
  const fb = await open(out, 'r');
  try {
    for (let off = 0; off < size; off += CHUNK) {
      const len = Math.min(CHUNK, size - off);
      const [x, y] = [await readRange(fa, off, len), await readRange(fb, off, len)];
      const same = x.equals(y);
      for (let i = 0; i < len; i += blockSize) {
        const n = Math.min(blockSize, len - i);
        // Buffer#compare on ranges: no per-block allocation
        const srcZero = zero.compare(x, i, i + n, 0, n) === 0;
        if (!srcZero) c.srcNonZeroBytes += n;
        if (same) {
          c.identicalBytes += n;
          if (!srcZero) c.outNonZeroBytes += n;
          continue;
        }
        const outZero = zero.compare(y, i, i + n, 0, n) === 0;
        if (!outZero) c.outNonZeroBytes += n;
        if (x.compare(y, i, i + n, i, i + n) === 0) c.identicalBytes += n;
        else if (outZero) c.zeroedBytes += n;
        else {
          c.mismatchedBytes += n;
          if (c.firstMismatches.length < 8) c.firstMismatches.push(off + i);
        }
      }
    }
  } finally {
    await fa.close();
    await fb.close();
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Stale data

/** Every 512-byte sector of the builders' deleted "stale" data starts with this (demo-disk.sh). */
export const STALE_TAG = Buffer.from('BMSNAP-STALE-SECTOR:');

/**
 * Number of sectors of PATH that hold the builders' deleted data. In the source it is what the
 * deletion left on disk; in a snapshot it must be ~0, since those sectors are free space.
 */
export async function countStaleSectors(path: string): Promise<number> {
  const size = await sizeOf(path);
  const fh = await open(path, 'r');
  let count = 0;
  try {
    for (let off = 0; off < size; off += CHUNK) {
      const buf = await readRange(fh, off, Math.min(CHUNK, size - off));
      for (let i = 0; i + STALE_TAG.length <= buf.length; i += SECTOR) {
        if (STALE_TAG.compare(buf, i, i + STALE_TAG.length) === 0) count++;
      }
    }
  } finally {
    await fh.close();
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// Filesystem checks

export interface FsckResult {
  index: number;
  fs: string | null;
  ok: boolean;
  tool: string;
  output: string;
}

async function fsckDevice(fs: string, dev: string): Promise<{ ok: boolean; tool: string; output: string }> {
  const tools: Record<string, [string, string[]]> = {
    ext2: ['e2fsck', ['-fn', dev]],
    ext3: ['e2fsck', ['-fn', dev]],
    ext4: ['e2fsck', ['-fn', dev]],
    xfs: ['xfs_repair', ['-n', dev]],
    vfat: ['fsck.vfat', ['-n', dev]],
  };
  const tool = tools[fs];
  if (!tool) return { ok: true, tool: 'none', output: `no checker for ${fs}` };
  const r = await runUnchecked(tool[0], tool[1]);
  return { ok: r.exitCode === 0, tool: tool[0], output: `${r.stdout}\n${r.stderr}`.trim() };
}

/** Checks the filesystem in bytes [OFFSET, +SIZE) of RAW (a logical volume, say) read-only. */
export async function fsckWindow(raw: string, offset: number, size: number): Promise<{ fs: string | null; ok: boolean; tool: string; output: string }> {
  const fs = await detectFs(raw, offset, size);
  if (!fs) return { fs, ok: false, tool: 'none', output: 'no filesystem there' };
  return { fs, ...await withReadOnlyWindow(raw, offset, size, (dev) => fsckDevice(fs, dev)) };
}

/** Checks every filesystem on RAW (read-only loop windows); partitions without one are skipped. */
export async function fsckAll(raw: string): Promise<FsckResult[]> {
  const table = await readPartitionTable(raw);
  const results: FsckResult[] = [];
  for (const p of table.partitions) {
    if (isExtendedContainer(table, p)) continue;
    const fs = await detectFs(raw, p.start, p.size);
    if (fs === null || fs === 'swap') {
      results.push({ index: p.index, fs, ok: true, tool: 'none', output: fs ? 'swap signature present' : 'no filesystem' });
      continue;
    }
    const r = await withReadOnlyWindow(raw, p.start, p.size, (dev) => fsckDevice(fs, dev));
    results.push({ index: p.index, fs, ...r });
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Tree digests

export interface TreeDigest {
  fs: string;
  /** One canonical line per object; compare these for a readable diff. */
  entries: string[];
  /** sha256 of the lines. */
  digest: string;
}

function digestOf(fs: string, entries: string[]): TreeDigest {
  return { fs, entries, digest: createHash('sha256').update(entries.join('\n')).digest('hex') };
}

/**
 * Canonical digest of the whole tree of filesystem PARTITIONINDEX of RAW (0 = whole disk):
 * paths, types, modes, owners, sizes, allocated blocks, mtimes (ns), link counts, symlink
 * targets, hard-link groups, xattrs and sha256 of contents. ext4/xfs are mounted read-only
 * without journal replay; vfat is read with mtools.
 */
export async function treeDigest(raw: string, partitionIndex: number): Promise<TreeDigest> {
  const p = await findPartition(raw, partitionIndex);
  const fs = await detectFs(raw, p.start, p.size);
  if (fs === 'vfat') return vfatDigest(raw, p);
  if (fs !== 'ext4' && fs !== 'xfs' && fs !== 'ext3' && fs !== 'ext2') throw new Error(`partition ${partitionIndex} of ${raw}: no tree to digest (${fs})`);
  const fsType: FsType = fs === 'xfs' ? 'xfs' : 'ext4';
  return withReadOnlyWindow(raw, p.start, p.size, (dev) =>
    withMount(dev, readOnlyMountOptions(fsType), async (dir) => digestOf(fs, await walkTree(dir))));
}

/** The same canonical digest of a tree already mounted (or staged) at DIR, e.g. a btrfs. */
export async function digestDirectory(fs: string, dir: string): Promise<TreeDigest> {
  return digestOf(fs, await walkTree(dir));
}

async function walkTree(root: string): Promise<string[]> {
  const xattrs = await collectXattrs(root);
  const firstPathOfInode = new Map<bigint, string>();
  const lines: string[] = [];
  const visit = async (rel: string): Promise<void> => {
    const abs = rel === '.' ? root : join(root, rel);
    const st = await lstat(abs, { bigint: true });
    const mode = (st.mode & 0o7777n).toString(8).padStart(4, '0');
    const fields = [rel, typeOf(st), mode, `${st.uid}:${st.gid}`, `nlink=${st.nlink}`, `mtime=${st.mtimeNs}`];
    if (st.isFile()) {
      fields.push(`size=${st.size}`, `blocks=${st.blocks}`);
      const first = firstPathOfInode.get(st.ino);
      if (st.nlink > 1n && first !== undefined) fields.push(`hardlink=${first}`);
      else {
        if (st.nlink > 1n) firstPathOfInode.set(st.ino, rel);
        fields.push(`sha256=${await sha256File(abs)}`);
      }
    } else if (st.isSymbolicLink()) {
      fields.push(`size=${st.size}`, `target=${await readlink(abs)}`);
    } else if (st.isBlockDevice() || st.isCharacterDevice()) {
      fields.push(`rdev=${st.rdev}`);
    }
    const x = xattrs.get(abs);
    if (x) fields.push(`xattrs=${x.join(',')}`);
    lines.push(fields.join('\t'));
    if (st.isDirectory()) {
      const names = (await readdir(abs)).sort();
      for (const name of names) await visit(rel === '.' ? name : `${rel}/${name}`);
    }
  };
  await visit('.');
  return lines;
}

function typeOf(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean; isFIFO(): boolean; isSocket(): boolean; isBlockDevice(): boolean }): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return st.isBlockDevice() ? 'blockdev' : 'chardev';
}

/** All xattrs under ROOT, symlinks not followed: absolute path -> sorted "name=0xhex" list. */
async function collectXattrs(root: string): Promise<Map<string, string[]>> {
  const out = await runUnchecked('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root]);
  if (out.exitCode !== 0) throw new Error(`getfattr failed: ${out.stderr}`);
  const map = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const line of out.stdout.split('\n')) {
    const file = /^# file: (.*)$/.exec(line);
    if (file) {
      current = [];
      map.set(file[1]!.replace(/\/$/, ''), current);
    } else if (line.trim() !== '' && current) {
      current.push(line.trim());
    }
  }
  for (const v of map.values()) v.sort();
  return map;
}

/** vfat via mtools: the directory listing (names, short names, sizes, dates), attributes, contents. */
async function vfatDigest(raw: string, p: PartitionEntry): Promise<TreeDigest> {
  const image = `${raw}@@${p.start}`;
  const listing = (await run('mdir', ['-/', '-a', '-i', image, '::']))
    .split('\n')
    .filter((l) => !/bytes free\s*$/.test(l))
    .map((l) => `dir\t${l.trimEnd()}`);
  const attributes = (await run('mattrib', ['-/', '-i', image, '::/'])).split('\n').map((l) => `attr\t${l.trimEnd()}`);
  const stage = await makeTempDir('bmsnap-vfat-');
  try {
    await run('mcopy', ['-s', '-n', '-m', '-i', image, '::', stage]);
    const files = await walkTree(stage);
    // the staging root is ours, not the filesystem's
    const contents = files.filter((l) => !l.startsWith('.\t')).map((l) => `file\t${stripLocalFields(l)}`);
    return digestOf('vfat', [...listing, ...attributes, ...contents]);
  } finally {
    await removeTempDir(stage);
  }
}

/** Keeps path, type, size, hash and mtime of a staged vfat file; drops what staging decides. */
function stripLocalFields(line: string): string {
  const f = line.split('\t');
  const keep = f.filter((x, i) => i <= 1 || x.startsWith('size=') || x.startsWith('sha256=') || (f[1] === 'file' && x.startsWith('mtime=')));
  return keep.join('\t');
}

/** Digests of every filesystem with a tree on RAW, keyed by partition index. */
export async function digestAll(raw: string): Promise<Map<number, TreeDigest>> {
  const table = await readPartitionTable(raw);
  const digests = new Map<number, TreeDigest>();
  for (const p of table.partitions) {
    if (isExtendedContainer(table, p)) continue;
    const fs = await detectFs(raw, p.start, p.size);
    if (fs && ['ext2', 'ext3', 'ext4', 'xfs', 'vfat'].includes(fs)) digests.set(p.index, await treeDigest(raw, p.index));
  }
  return digests;
}

// ---------------------------------------------------------------------------------------------
// Locating bytes (for tests that corrupt things on purpose)

/** Absolute offset of the first occurrence of NEEDLE in PATH's window [start, start+size), or -1. */
export async function findBytes(path: string, start: number, size: number, needle: Buffer): Promise<number> {
  const fh = await open(path, 'r');
  try {
    const overlap = needle.length - 1;
    for (let off = start; off < start + size; off += CHUNK) {
      const len = Math.min(CHUNK + overlap, start + size - off);
      const i = (await readRange(fh, off, len)).indexOf(needle);
      if (i >= 0) return off + i;
    }
    return -1;
  } finally {
    await fh.close();
  }
}

/** XORs N bytes at OFFSET of PATH with 0xff; returns a function that restores them. */
export async function flipBytes(path: string, offset: number, n = 1): Promise<() => Promise<void>> {
  const fh = await open(path, 'r+');
  try {
    const original = await readRange(fh, offset, n);
    await fh.write(original.map((b) => b ^ 0xff), 0, n, offset);
    return async () => {
      const f = await open(path, 'r+');
      try {
        await f.write(original, 0, n, offset);
      } finally {
        await f.close();
      }
    };
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Misc

/** Bytes of a file actually allocated (sparse files count only their data). */
export async function allocatedBytes(path: string): Promise<number> {
  const st = await lstat(path);
  return st.blocks * 512;
}

/** Physical byte offset, in RAW, of the first data block of FILE inside filesystem PARTITIONINDEX. */
export async function physicalOffsetOf(raw: string, partitionIndex: number, file: string): Promise<number> {
  const p = await findPartition(raw, partitionIndex);
  const fs = await detectFs(raw, p.start, p.size);
  const fsType: FsType = fs === 'xfs' ? 'xfs' : 'ext4';
  const sectors = await withReadOnlyWindow(raw, p.start, p.size, (dev) =>
    withMount(dev, readOnlyMountOptions(fsType), async (dir) => {
      // xfs_io's fiemap prints "0: [0..7]: 12345..12352" in 512-byte units, on any filesystem
      const out = await run('xfs_io', ['-r', '-c', 'fiemap', join(dir, file)]);
      const m = /^\s*0: \[\d+\.\.\d+\]: (\d+)\.\.\d+/m.exec(out);
      if (!m) throw new Error(`no extent for ${file}: ${out}`);
      return Number(m[1]);
    }));
  return p.start + sectors * 512;
}
