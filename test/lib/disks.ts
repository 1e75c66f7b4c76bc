// Test disks for the e2e tests: sparse raw files built with the real tools (sgdisk, sfdisk,
// mkfs.*, mtools, loop devices). Content recipes (file trees, stale data, markers) and the GPT
// layout live in test/demo-disk.sh, shared with `npm run demo`; the other layouts are built here.
//
// Also the low-level helpers the verifiers share: running tools, loop devices, mounts, partition
// listing and filesystem detection. Everything needs root.
import { execa, type Options as ExecaOptions } from 'execa';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const DISK_SCRIPT = join(REPO_ROOT, 'test/demo-disk.sh');
const MiB = 1024 * 1024;
const SECTOR = 512;

// ---------------------------------------------------------------------------------------------
// Running tools

/** Environment for every tool: fixed locale and zone (mtools dates), mtools without geometry checks. */
export const TOOL_ENV = { LC_ALL: 'C', TZ: 'UTC', MTOOLS_SKIP_CHECK: '1' };

/** Runs a tool; throws (with its stderr) when it exits non-zero. Returns trimmed stdout. */
export async function run(cmd: string, args: string[], options: ExecaOptions = {}): Promise<string> {
  const stdin = options.input === undefined && options.inputFile === undefined ? { stdin: 'ignore' as const } : {};
  const result = await execa(cmd, args, { ...stdin, env: TOOL_ENV, ...options });
  return String(result.stdout ?? '');
}

/** Runs a tool and reports its exit code and output instead of throwing. */
export async function runUnchecked(cmd: string, args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const r = await execa(cmd, args, { stdin: 'ignore', env: TOOL_ENV, reject: false, all: false });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}

// ---------------------------------------------------------------------------------------------
// Resources held right now (loops, mounts, temp dirs). Normal paths release them in finally
// blocks and t.teardown; if the process is killed (tap's timeout sends SIGTERM, Ctrl-C sends
// SIGINT) or dies, these are released synchronously so no loop device or mount outlives a run.

/** mounts: our mount points; loops: device -> the file we attached it to; dirs: our temp dirs. */
const held = { mounts: new Set<string>(), loops: new Map<string, string>(), dirs: new Set<string>() };

/** The file a loop device is attached to now ('' if none): loop numbers are reused. */
function backingFile(dev: string): string {
  try {
    return readFileSync(`/sys/block/${dev.replace('/dev/', '')}/loop/backing_file`, 'utf8').trim();
  } catch {
    return '';
  }
}

function releaseAllNow(): void {
  for (const dir of held.mounts) spawnSync('umount', ['-l', dir], { stdio: 'ignore' });
  for (const [dev, file] of held.loops) {
    if (backingFile(dev) !== file) continue; // already released; the number may be someone else's now
    spawnSync('partx', ['-d', dev], { stdio: 'ignore' });
    spawnSync('losetup', ['-d', dev], { stdio: 'ignore' });
  }
  for (const dir of held.dirs) rmSync(dir, { recursive: true, force: true });
  held.mounts.clear();
  held.loops.clear();
  held.dirs.clear();
}

process.on('exit', releaseAllNow);
for (const [signal, code] of [['SIGTERM', 143], ['SIGINT', 130], ['SIGHUP', 129]] as const) {
  process.once(signal, () => {
    releaseAllNow();
    process.exit(code);
  });
}

/** A fresh directory under the system temp dir (removed at exit if the test did not). */
export async function makeTempDir(prefix = 'bmsnap-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  held.dirs.add(dir);
  return dir;
}

/** Removes a directory made by makeTempDir. */
export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  held.dirs.delete(dir);
}

// ---------------------------------------------------------------------------------------------
// Loop devices and mounts

export interface Loop {
  dev: string;
  detach(): Promise<void>;
}

export interface LoopOptions {
  readOnly?: boolean;
  /** Scan the partition table (pN nodes). */
  partscan?: boolean;
  /** Byte offset and size of a window of the file (e.g. one partition). */
  offset?: number;
  sizeLimit?: number;
  /** Logical sector size of the loop device (losetup --sector-size; default 512). */
  sectorSize?: number;
}

export async function attachLoop(file: string, o: LoopOptions = {}): Promise<Loop> {
  const args = ['-f', '--show'];
  if (o.readOnly) args.push('-r');
  if (o.partscan) args.push('-P');
  if (o.offset !== undefined) args.push('-o', String(o.offset));
  if (o.sizeLimit !== undefined) args.push('--sizelimit', String(o.sizeLimit));
  if (o.sectorSize !== undefined) args.push('--sector-size', String(o.sectorSize));
  const dev = await run('losetup', [...args, file]);
  held.loops.set(dev, backingFile(dev));
  const loop: Loop = {
    dev,
    async detach() {
      if (!held.loops.has(dev)) return; // already detached (the number may be someone else's now)
      if (o.partscan) await runUnchecked('partx', ['-d', dev]);
      await detachLoopDevice(dev);
    },
  };
  return loop;
}

async function detachLoopDevice(dev: string): Promise<void> {
  // a just-unmounted device can be briefly busy; retry a little
  for (let i = 0; i < 20; i++) {
    const r = await runUnchecked('losetup', ['-d', dev]);
    if (r.exitCode === 0 || backingFile(dev) === '') {
      held.loops.delete(dev);
      return;
    }
    await sleep(100);
  }
  throw new Error(`cannot detach ${dev}`);
}

/** Detaches every loop device backed by FILE (cleanup after a failure in a builder). */
export async function detachAllLoops(file: string): Promise<void> {
  const r = await runUnchecked('losetup', ['-j', file, '-O', 'NAME', '-n']);
  for (const dev of r.stdout.split('\n').map((l) => l.trim()).filter(Boolean)) {
    await runUnchecked('partx', ['-d', dev]);
    await detachLoopDevice(dev);
  }
}

/** The device node of partition N of a partition-scanned loop; runs partx -a if it is missing. */
export async function loopPartition(loop: Loop, n: number): Promise<string> {
  const node = `${loop.dev}p${n}`;
  const name = loop.dev.replace('/dev/', '');
  if (!existsSync(`/sys/block/${name}/${name}p${n}`)) await runUnchecked('partx', ['-a', loop.dev]);
  for (let i = 0; i < 100; i++) {
    if (existsSync(node)) return node;
    await sleep(50);
  }
  throw new Error(`${node} did not appear`);
}

export type FsType = 'ext4' | 'xfs' | 'vfat' | 'swap';

/** Read-only mount options that never write to the device (no journal replay). */
export function readOnlyMountOptions(fs: FsType): string {
  return fs === 'xfs' ? 'ro,norecovery,nouuid' : 'ro,noload';
}

/** Mounts DEV on a temp dir, runs FN(dir), unmounts and removes the dir whatever happens. */
export async function withMount<T>(dev: string, options: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await makeTempDir('bmsnap-mnt-');
  try {
    await run('mount', ['-o', options, dev, dir]);
    held.mounts.add(dir);
    try {
      return await fn(dir);
    } finally {
      await run('umount', [dir]);
      held.mounts.delete(dir);
    }
  } finally {
    await removeTempDir(dir);
  }
}

/** Mounts partition N of disk image FILE (on a partition-scanned loop) with OPTIONS, runs FN(dir), undoes both. */
export async function withPartitionMount<T>(file: string, n: number, options: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const loop = await attachLoop(file, { partscan: true, readOnly: options.split(',').includes('ro') });
  try {
    return await withMount(await loopPartition(loop, n), options, fn);
  } finally {
    await loop.detach();
  }
}

/** Attaches a read-only loop on a byte window of FILE, runs FN(dev), detaches. */
export async function withReadOnlyWindow<T>(file: string, offset: number, size: number, fn: (dev: string) => Promise<T>): Promise<T> {
  const loop = await attachLoop(file, { readOnly: true, offset, sizeLimit: size });
  try {
    return await fn(loop.dev);
  } finally {
    await loop.detach();
  }
}

// ---------------------------------------------------------------------------------------------
// Inspecting disks

export interface PartitionEntry {
  /** Partition number as Linux numbers it (MBR logicals from 5); 0 = whole disk, no table. */
  index: number;
  /** Bytes. */
  start: number;
  size: number;
  /** GPT type GUID (upper case) or MBR type byte in hex ("83", "5"). */
  type: string;
  name?: string;
}

export interface PartitionTable {
  label: 'gpt' | 'dos' | null;
  partitions: PartitionEntry[];
}

export const GPT_BIOS_BOOT = '21686148-6449-6E6F-744E-656564454649';
export const MBR_EXTENDED_TYPES = new Set(['5', 'f', '85']);

/** Size in bytes of a file or block device. */
export async function sizeOf(path: string): Promise<number> {
  const st = await stat(path);
  if (!st.isBlockDevice()) return st.size;
  return Number(await run('blockdev', ['--getsize64', path]));
}

interface SfdiskJson {
  partitiontable: {
    label: string;
    sectorsize?: number;
    partitions?: { node: string; start: number; size: number; type: string; name?: string }[];
  };
}

/** Partition table of a raw image (via sfdisk); a disk without one is one "partition" 0. */
export async function readPartitionTable(path: string): Promise<PartitionTable> {
  const r = await runUnchecked('sfdisk', ['--json', path]);
  if (r.exitCode !== 0 || r.stdout.trim() === '') {
    return { label: null, partitions: [{ index: 0, start: 0, size: await sizeOf(path), type: 'none' }] };
  }
  const pt = (JSON.parse(r.stdout) as SfdiskJson).partitiontable;
  const sector = pt.sectorsize ?? SECTOR;
  const partitions = (pt.partitions ?? []).map((p) => {
    const entry: PartitionEntry = {
      index: Number(/(\d+)$/.exec(p.node)?.[1] ?? NaN),
      start: p.start * sector,
      size: p.size * sector,
      type: pt.label === 'gpt' ? p.type.toUpperCase() : p.type.toLowerCase(),
    };
    if (p.name !== undefined) entry.name = p.name;
    return entry;
  });
  return { label: pt.label === 'gpt' ? 'gpt' : 'dos', partitions };
}

export function isExtendedContainer(table: PartitionTable, p: PartitionEntry): boolean {
  return table.label === 'dos' && MBR_EXTENDED_TYPES.has(p.type.toLowerCase());
}

/** Filesystem signature in a byte window of PATH (blkid low-level probe), or null. */
export async function detectFs(path: string, offset: number, size: number): Promise<string | null> {
  const r = await runUnchecked('blkid', ['-p', '-o', 'export', '-O', String(offset), '-S', String(size), path]);
  if (r.exitCode !== 0) return null;
  const m = /^TYPE=(.*)$/m.exec(r.stdout);
  return m?.[1] ?? null;
}

export async function findPartition(path: string, index: number): Promise<PartitionEntry> {
  const table = await readPartitionTable(path);
  const p = table.partitions.find((x) => x.index === index);
  if (!p) throw new Error(`${path} has no partition ${index}`);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Test disks

export type LayoutName = 'gpt' | 'mbr' | 'raw-ext4' | 'unknown-fs';

export interface ExpectedPartition {
  /** Linux partition number (0 = the whole disk, no partition table). */
  index: number;
  role: string;
  /** Filesystem the tool should report; null when there is none (copied fully). */
  fs: FsType | null;
  /** The tool must copy every byte (BIOS boot, unknown content). */
  copiedFully: boolean;
  /** An MBR extended partition: only its EBRs matter. */
  container?: boolean;
}

export interface TestDisk {
  layout: LayoutName;
  path: string;
  size: number;
  description: string;
  table: 'gpt' | 'dos' | null;
  partitions: ExpectedPartition[];
  /** Random bytes written to free space and deleted before the final content. */
  staleBytes: number;
  cleanup(): Promise<void>;
}

/** Builds a disk in a fresh temp dir; cleanup detaches any loop on it and removes the dir. */
export async function buildDisk(layout: LayoutName, dir?: string): Promise<TestDisk> {
  const workDir = dir ?? (await makeTempDir(`bmsnap-disk-${layout}-`));
  const path = join(workDir, `${layout}.raw`);
  const cleanup = async () => {
    await detachAllLoops(path);
    if (dir) await rm(path, { force: true });
    else await removeTempDir(workDir);
  };
  try {
    await rm(path, { force: true }); // truncate would keep an old file's bytes
    const built = await BUILDERS[layout](path);
    return { layout, path, size: await sizeOf(path), cleanup, ...built };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

type Built = Pick<TestDisk, 'description' | 'table' | 'partitions' | 'staleBytes'>;

const BUILDERS: Record<LayoutName, (path: string) => Promise<Built>> = {
  gpt: buildGpt,
  mbr: buildMbr,
  'raw-ext4': buildRawExt4,
  'unknown-fs': buildUnknownFs,
};

async function diskScript(args: string[]): Promise<string> {
  return run('bash', [DISK_SCRIPT, ...args]);
}

/** (a) GPT: BIOS boot, ESP (FAT32), ext4 root (4 KiB blocks), xfs data, swap; see demo-disk.sh. */
async function buildGpt(path: string): Promise<Built> {
  const summary = JSON.parse(await diskScript(['gpt', path])) as { staleBytes: number };
  return {
    description: 'GPT 660 MiB: p1 BIOS boot (marker), p2 ESP FAT32, p3 ext4 root 4K, p4 xfs, p5 swap; markers in LBA0 boot code and LBA 34..2047',
    table: 'gpt',
    staleBytes: summary.staleBytes,
    partitions: [
      { index: 1, role: 'bios-boot', fs: null, copiedFully: true },
      { index: 2, role: 'esp', fs: 'vfat', copiedFully: false },
      { index: 3, role: 'root', fs: 'ext4', copiedFully: false },
      { index: 4, role: 'data', fs: 'xfs', copiedFully: false },
      { index: 5, role: 'swap', fs: 'swap', copiedFully: false },
    ],
  };
}

/** Writes BYTES at byte OFFSET of PATH without truncating it. */
export async function writeAt(path: string, offset: number, bytes: Uint8Array): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(bytes, 0, bytes.length, offset);
  } finally {
    await fh.close();
  }
}

async function markerBytes(tag: string, sectors: number): Promise<Buffer> {
  const r = await execa('bash', [DISK_SCRIPT, 'marker', tag, String(sectors)], { stdin: 'ignore', env: TOOL_ENV, encoding: 'buffer', stripFinalNewline: false });
  return Buffer.from(r.stdout);
}

/** Boot code marker in bytes 0..439 of LBA 0 (leaves the disk signature and the table alone). */
async function writeBootCodeMarker(path: string): Promise<void> {
  await writeAt(path, 0, (await markerBytes('BOOTCODE', 1)).subarray(0, 440));
}

/** Marker in sectors FROM..TO-1 (sector i holds the pattern for index i). */
async function writeSectorMarker(path: string, tag: string, from: number, to: number): Promise<void> {
  await writeAt(path, from * SECTOR, (await markerBytes(tag, to)).subarray(from * SECTOR));
}

async function fillStale(dir: string, seed: string, mib: number): Promise<void> {
  await diskScript(['fill-stale', dir, seed, String(mib)]);
}

async function fillTree(dir: string, seed: string): Promise<void> {
  await diskScript(['fill-tree', dir, seed]);
}

/** Stale data then the file tree, on a fresh ext4/xfs. */
async function populate(dev: string, seed: string, staleMiB: number): Promise<void> {
  await withMount(dev, 'rw', async (dir) => {
    await fillStale(dir, seed, staleMiB);
    await fillTree(dir, seed);
  });
}

async function withPartitionedLoop<T>(path: string, fn: (loop: Loop) => Promise<T>): Promise<T> {
  const loop = await attachLoop(path, { partscan: true });
  try {
    return await fn(loop);
  } finally {
    await loop.detach();
  }
}

const MBR_SFDISK_SCRIPT = [
  'label: dos',
  'label-id: 0x4d42534e',
  'start=2048, size=128MiB, type=83',
  'size=320MiB, type=83',
  'type=5',
  'size=96MiB, type=83',
  'size=64MiB, type=e',
].join('\n');

const MBR_STALE_MIB = { p1: 64, p2: 96, p5: 48, p6: 24 };

/** (b) MBR: ext4 (1 KiB blocks), xfs, extended with a logical ext4 (no flex_bg/64bit/csum) and a logical FAT16. */
async function buildMbr(path: string): Promise<Built> {
  await run('truncate', ['-s', `${640 * MiB}`, path]);
  await run('sfdisk', ['--quiet', path], { input: MBR_SFDISK_SCRIPT });
  await writeBootCodeMarker(path);
  await writeSectorMarker(path, 'GAP', 1, 2048);
  await withPartitionedLoop(path, async (loop) => {
    const p1 = await loopPartition(loop, 1);
    const p2 = await loopPartition(loop, 2);
    const p5 = await loopPartition(loop, 5);
    const p6 = await loopPartition(loop, 6);
    await run('mkfs.ext4', ['-q', '-F', '-L', 'mbr-one', '-U', '3b0d5f5e-0c7a-4f61-8f35-6f1c2a9b0c01',
      '-E', 'lazy_itable_init=0,lazy_journal_init=0', p1]);
    await run('mkfs.xfs', ['-q', '-f', '-L', 'mbr-two', '-m', 'uuid=3b0d5f5e-0c7a-4f61-8f35-6f1c2a9b0c02', p2]);
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-O', '^metadata_csum,^64bit,^flex_bg', '-L', 'mbr-five',
      '-U', '3b0d5f5e-0c7a-4f61-8f35-6f1c2a9b0c05', '-E', 'lazy_itable_init=0,lazy_journal_init=0', p5]);
    await run('mkfs.vfat', ['-n', 'MBRSIX', '-i', '4D425306', p6]);
    await populate(p1, 'mbr1', MBR_STALE_MIB.p1);
    await populate(p2, 'mbr2', MBR_STALE_MIB.p2);
    await populate(p5, 'mbr5', MBR_STALE_MIB.p5);
  });
  // vfat content through mtools on the image itself (the kernel has no vfat)
  const p6 = await findPartition(path, 6);
  await diskScript(['fill-vfat', `${path}@@${p6.start}`, 'mbr6', String(MBR_STALE_MIB.p6)]);
  return {
    description: 'MBR 640 MiB: p1 ext4 1K blocks, p2 xfs, p3 extended { p5 ext4 4K no flex_bg/64bit/csum, p6 FAT16 }; markers in LBA0 boot code and LBA 1..2047',
    table: 'dos',
    staleBytes: Object.values(MBR_STALE_MIB).reduce((a, b) => a + b, 0) * MiB,
    partitions: [
      { index: 1, role: 'primary ext4', fs: 'ext4', copiedFully: false },
      { index: 2, role: 'primary xfs', fs: 'xfs', copiedFully: false },
      { index: 3, role: 'extended', fs: null, copiedFully: false, container: true },
      { index: 5, role: 'logical ext4', fs: 'ext4', copiedFully: false },
      { index: 6, role: 'logical vfat', fs: 'vfat', copiedFully: false },
    ],
  };
}

const RAW_STALE_MIB = 128;

/** (c) No partition table: ext4 over the whole 256 MiB disk. */
async function buildRawExt4(path: string): Promise<Built> {
  await run('truncate', ['-s', `${256 * MiB}`, path]);
  await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-L', 'bare', '-U', '5e2b1c3d-7a8f-4e6d-9c0b-1a2b3c4d5e00',
    '-E', 'lazy_itable_init=0,lazy_journal_init=0', path]);
  const loop = await attachLoop(path);
  try {
    await populate(loop.dev, 'raw', RAW_STALE_MIB);
  } finally {
    await loop.detach();
  }
  return {
    description: 'no partition table: ext4 (4K blocks) over the whole 256 MiB disk',
    table: null,
    staleBytes: RAW_STALE_MIB * MiB,
    partitions: [{ index: 0, role: 'whole-disk ext4', fs: 'ext4', copiedFully: false }],
  };
}

const UNKNOWN_STALE_MIB = 32;

/** (d) GPT with an ext4 and a partition of unrecognizable bytes (random islands, zeros between). */
async function buildUnknownFs(path: string): Promise<Built> {
  await run('truncate', ['-s', `${256 * MiB}`, path]);
  await run('sgdisk', ['-U', 'a1b2c3d4-0000-4000-8000-00000000d000',
    '-n1:2048:+96M', '-t1:8300', '-c1:ext4', '-u1:a1b2c3d4-0000-4000-8000-00000000d001',
    '-n2:0:+128M', '-t2:8300', '-c2:garbage', '-u2:a1b2c3d4-0000-4000-8000-00000000d002', path]);
  await withPartitionedLoop(path, async (loop) => {
    const p1 = await loopPartition(loop, 1);
    await run('mkfs.ext4', ['-q', '-F', '-L', 'known', '-U', 'a1b2c3d4-0000-4000-8000-00000000e001',
      '-E', 'lazy_itable_init=0,lazy_journal_init=0', p1]);
    await populate(p1, 'unknown-disk', UNKNOWN_STALE_MIB);
  });
  const p2 = await findPartition(path, 2);
  await writeAt(path, p2.start, await randomBytes('garbage-head', 8 * MiB));
  await writeAt(path, p2.start + 64 * MiB + 12345, await randomBytes('garbage-middle', MiB + 777));
  await writeAt(path, p2.start + p2.size - 4096, await randomBytes('garbage-tail', 4096));
  return {
    description: 'GPT 256 MiB: p1 ext4 (1K blocks), p2 128 MiB of random islands and zeros (no filesystem)',
    table: 'gpt',
    staleBytes: UNKNOWN_STALE_MIB * MiB,
    partitions: [
      { index: 1, role: 'ext4', fs: 'ext4', copiedFully: false },
      { index: 2, role: 'unknown', fs: null, copiedFully: true },
    ],
  };
}

/** Deterministic pseudo-random bytes (AES-CTR keystream, as demo-disk.sh makes them). */
export async function randomBytes(key: string, length: number): Promise<Buffer> {
  const script = `k=$(printf '%s' "$1" | sha256sum | cut -c1-32); { openssl enc -aes-128-ctr -nosalt -K "$k" -iv 0 -in /dev/zero 2>/dev/null || true; } | head -c "$2"`;
  const r = await execa('bash', ['-c', script, 'rand', key, String(length)], { stdin: 'ignore', encoding: 'buffer', stripFinalNewline: false, maxBuffer: length + 1 });
  return Buffer.from(r.stdout);
}

export const ALL_LAYOUTS: LayoutName[] = ['gpt', 'mbr', 'raw-ext4', 'unknown-fs'];
