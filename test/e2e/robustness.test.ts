// Robustness matrix (issue 11): real disks built with the real tools (sparse files, loop
// devices, sgdisk/sfdisk, mkfs.*, lvm), each imaged with the built CLI, converted back with
// qemu-img and compared with the source file by file (treeDigest: sha256 of every file, xattrs,
// owners, modes, symlinks, hard links), by partition table and by filesystem UUID; the source's
// sha256 must not change.
//   a. crash consistency: ext4 and xfs shut down mid-write (dirty journal / log)
//   b. 4096-byte logical sectors (GPT on a 4K loop device), from the device and from the file
//   c. MBR with filesystems in logical partitions
//   d. content bmsnap does not parse: btrfs, an LVM physical volume (zero-block fallback)
//   e. a 2 TiB sparse disk holding 1 GiB: the work follows the used bytes, not the disk size
//   f. seeded byte flips in ext4, xfs, vfat and GPT metadata through the CLI
// Every loop device, mount and temp dir is released even on failure (test/lib/disks.ts tracks
// them). Bounded: a few minutes on 2 cores.
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  DISK_SCRIPT, REPO_ROOT, attachLoop, buildDisk, loopPartition, makeTempDir, readPartitionTable, removeTempDir, run, runUnchecked,
  sizeOf, withMount, withReadOnlyWindow, randomBytes, type Loop, type PartitionTable,
} from '../lib/disks.js';
import { CLI, bmsnap } from '../lib/cli.js';
import {
  compareBlocks, comparePartitionTables, compareRegions, convertToRaw, digestAll, digestDirectory, qemuImgCheck,
  sha256File, treeDigest, type Region, type TreeDigest,
} from '../lib/verify.js';
import { corruption, prng, type Target } from '../unit/corruption.js';

const SCALE_DISK = join(REPO_ROOT, 'test/lib/scale-disk.sh');
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

type Manifest = import('../../agent/src/image-disk.js').Manifest;
type Tap = Test;


/** bmsnap image SRC -o OUT --json; the manifest, or null after a failed assertion. */
async function imageOk(t: Tap, src: string, out: string, what = 'bmsnap image'): Promise<Manifest | null> {
  const r = await bmsnap(['image', src, '-o', out, '--json']);
  t.equal(r.exitCode, 0, `${what} exits 0 (${r.seconds} s)`, { stderr: r.stderr.slice(-4000) });
  if (r.exitCode !== 0) return null;
  t.notOk(/^\s+at /m.test(r.stderr), 'no stack trace');
  return JSON.parse(r.stdout) as Manifest;
}

function sameTree(t: Tap, what: string, src: TreeDigest | undefined, out: TreeDigest | undefined): void {
  if (src && out && out.digest === src.digest) {
    t.pass(`${what} (${src.fs}): tree identical (${src.entries.length} entries)`);
    return;
  }
  const a = new Set(src?.entries ?? []);
  const b = new Set(out?.entries ?? []);
  t.fail(`${what}: tree differs`, {
    onlyInSource: (src?.entries ?? []).filter((l) => !b.has(l)).slice(0, 20),
    onlyInOutput: (out?.entries ?? []).filter((l) => !a.has(l)).slice(0, 20),
  });
}

function sameDigests(t: Tap, src: Map<number, TreeDigest>, out: Map<number, TreeDigest>, expected: number): void {
  t.equal(src.size, expected, `the source has ${expected} filesystems with a tree`);
  t.same([...out.keys()], [...src.keys()], 'same filesystems');
  for (const [i, d] of src) sameTree(t, `partition ${i}`, d, out.get(i));
}

/** blkid's low-level probe of a byte window: TYPE, UUID, LABEL... */
async function blkid(path: string, offset: number, size: number): Promise<Record<string, string>> {
  const r = await runUnchecked('blkid', ['-p', '-o', 'export', '-O', String(offset), '-S', String(size), path]);
  const tags: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m) tags[m[1]!] = m[2]!;
  }
  return tags;
}

/** TYPE/UUID/UUID_SUB/LABEL of every partition (by index) of a table. */
async function fsIds(path: string, table: PartitionTable): Promise<Record<number, string>> {
  const ids: Record<number, string> = {};
  for (const p of table.partitions) {
    if (table.label === 'dos' && ['5', 'f', '85'].includes(p.type)) continue;
    const tags = await blkid(path, p.start, p.size);
    ids[p.index] = ['TYPE', 'UUID', 'UUID_SUB', 'LABEL'].map((k) => `${k}=${tags[k] ?? ''}`).join(' ');
  }
  return ids;
}

async function sparseCopy(src: string, dst: string): Promise<string> {
  await run('cp', ['--sparse=always', src, dst]);
  return dst;
}

async function rmf(...paths: string[]): Promise<void> {
  await run('rm', ['-f', ...paths]);
}

async function withPartscan<T>(file: string, fn: (loop: Loop) => Promise<T>, o: { sectorSize?: number; readOnly?: boolean } = {}): Promise<T> {
  const loop = await attachLoop(file, { partscan: true, ...o });
  try {
    return await fn(loop);
  } finally {
    await loop.detach();
  }
}

/** demo-disk.sh's file tree (modes, owners, xattrs, links, sparse and fragmented files). */
async function fillTree(dir: string, seed: string): Promise<void> {
  await run('bash', [DISK_SCRIPT, 'fill-tree', dir, seed]);
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

if (!existsSync(CLI)) {
  t.fail(`${CLI} is missing: run npm run build`);
} else {
  const work = await makeTempDir('bmsnap-robust-');
  t.teardown(() => removeTempDir(work));
  const only = process.env.ROBUSTNESS_ONLY; // e.g. "b,d": run only those cases (for debugging)
  const want = (k: string) => !only || only.split(',').includes(k);
  if (want('a')) t.test('a. crash consistency: ext4 and xfs shut down mid-write', (t) => crashConsistency(t, work));
  if (want('b')) t.test('b. 4096-byte logical sectors', (t) => fourKSectors(t, work));
  if (want('c')) t.test('c. MBR: filesystems in logical partitions', (t) => mbrLogicals(t, work));
  if (want('d')) t.test('d. unparsed content: btrfs and an LVM physical volume', (t) => unparsed(t, work));
  if (want('e')) t.test('e. a 2 TiB sparse disk holding 1 GiB', (t) => hugeDisk(t, work));
  if (want('f')) t.test('f. seeded metadata corruption through the CLI', (t) => corruptedMetadata(t, work));
}

// ---------------------------------------------------------------------------------------------
// a. crash consistency

/** Writes through XFS_IOC_GOINGDOWN without a log flush (ext4 honours the same ioctl). */
async function shutdownNoLogFlush(dir: string): Promise<void> {
  await run('xfs_io', ['-x', '-c', 'shutdown', dir]);
}

/** A sync'd baseline, then changes of which some are fsync'd, some not, then a shutdown. */
async function writeThenCrash(dev: string, seed: string): Promise<void> {
  await withMount(dev, 'rw', async (dir) => {
    await fillTree(join(dir, 'baseline'), seed);
    await run('sync', []);
    // fsync'd: committed to the journal/log, not yet written back in place
    for (let i = 0; i < 6; i++) {
      await run('xfs_io', ['-f', '-c', `pwrite -q -S 0x${(0x41 + i).toString(16)} 0 ${(i + 1) * 37000}`, '-c', 'fsync', join(dir, `fsynced-${i}.bin`)]);
    }
    await run('mkdir', ['-p', join(dir, 'fsynced-dir/sub')]);
    await run('xfs_io', ['-f', '-c', 'pwrite -q -S 0x5a 0 65536', '-c', 'fsync', join(dir, 'fsynced-dir/sub/f')]);
    await run('rm', ['-rf', join(dir, 'baseline/data/many')]);
    await run('mv', [join(dir, 'baseline/etc/passwd'), join(dir, 'baseline/etc/passwd.moved')]);
    await run('xfs_io', ['-c', 'fsync', join(dir, 'baseline/etc')]);
    await run('xfs_io', ['-c', 'fsync', join(dir, 'baseline/data')]);
    // not fsync'd: may or may not survive, but the image must agree with the source
    for (let i = 0; i < 4; i++) {
      await run('xfs_io', ['-f', '-c', `pwrite -q -S 0x${(0x61 + i).toString(16)} 0 ${(i + 1) * 50000}`, join(dir, `unsynced-${i}.bin`)]);
    }
    await run('setfattr', ['-n', 'user.crash', '-v', 'pending', join(dir, 'fsynced-0.bin')]);
    await shutdownNoLogFlush(dir);
  });
}

/** Mounts partition INDEX of RAW read-write and unmounts it: the journal/log is replayed. */
async function replay(raw: string, index: number, fs: 'ext4' | 'xfs'): Promise<void> {
  const p = (await readPartitionTable(raw)).partitions.find((x) => x.index === index)!;
  const loop = await attachLoop(raw, { offset: p.start, sizeLimit: p.size });
  try {
    await withMount(loop.dev, fs === 'xfs' ? 'rw,nouuid' : 'rw', async () => {});
  } finally {
    await loop.detach();
  }
}

async function crashConsistency(t: Tap, work: string): Promise<void> {
  const dir = join(work, 'crash');
  await run('mkdir', ['-p', dir]);
  const src = join(dir, 'src.raw');
  await run('truncate', ['-s', `${448 * MiB}`, src]);
  await run('sgdisk', ['-U', 'c7a5c000-0000-4000-8000-000000000000', '-n1:2048:+96M', '-t1:8300', '-c1:ext4',
    '-n2:0:+320M', '-t2:8300', '-c2:xfs', src]);
  await withPartscan(src, async (loop) => {
    const p1 = await loopPartition(loop, 1);
    const p2 = await loopPartition(loop, 2);
    await run('mkfs.ext4', ['-q', '-F', '-L', 'crash-ext4', '-E', 'lazy_itable_init=0,lazy_journal_init=0', p1]);
    await run('mkfs.xfs', ['-q', '-f', '-L', 'crash-xfs', p2]);
    await writeThenCrash(p1, 'crash-ext4');
    await writeThenCrash(p2, 'crash-xfs');
  });
  const srcSha = await sha256File(src);
  const table = await readPartitionTable(src);

  const out = join(dir, 'out.qcow2');
  const m = await imageOk(t, src, out);
  if (!m) return;
  const p1 = m.partitions.find((p) => p.index === 1);
  const p2 = m.partitions.find((p) => p.index === 2);
  t.match(p1?.method, /whole filesystem \(journal needs recovery/, `ext4 with a dirty journal: "${p1?.method}"`);
  t.match(p2?.method, /^xfs whole filesystem \(log not clean\)/, `xfs with a dirty log: "${p2?.method}"`);
  t.equal(p1?.usedBytes, p1?.size, 'ext4: copied whole');
  t.equal(p2?.usedBytes, p2?.size, 'xfs: copied whole');
  t.ok(m.warnings.some((w) => /journal|log/.test(w)), 'a warning says so', { warnings: m.warnings });
  t.ok((await qemuImgCheck(out)).clean, 'qemu-img check clean');

  const back = join(dir, 'back.raw');
  await convertToRaw(out, back);
  t.same(await comparePartitionTables(src, back), [], 'partition tables identical');
  const regions: Region[] = table.partitions.map((p) => ({ name: `partition ${p.index}`, offset: p.start, length: p.size }));
  t.same(await compareRegions(src, back, regions), [], 'both dirty filesystems byte for byte the source\'s (journal/log included)');

  // replay on sparse copies only: the source itself is never mounted
  const srcCopy = await sparseCopy(src, join(dir, 'src-copy.raw'));
  for (const [index, fs] of [[1, 'ext4'], [2, 'xfs']] as const) {
    const unreplayed = await treeDigest(srcCopy, index); // (read-only, no journal/log replay)
    await replay(srcCopy, index, fs);
    await replay(back, index, fs);
    const a = await treeDigest(srcCopy, index);
    const b = await treeDigest(back, index);
    t.ok(a.entries.some((l) => l.startsWith('fsynced-dir/sub/f\t')), `${fs}: the replayed source holds the fsync'd files`);
    t.not(a.digest, unreplayed.digest, `${fs}: the journal/log really held changes (the tree differs before and after replay)`);
    sameTree(t, `${fs} after log replay`, a, b);
  }
  t.equal(await sha256File(src), srcSha, 'the source is unchanged');
  await rmf(src, srcCopy, back, out);
}

// ---------------------------------------------------------------------------------------------
// b. 4096-byte logical sectors

async function gptDescription(dev: string): Promise<string> {
  // (the device name aside: the source's and the output's loops differ)
  const lines = [(await run('sgdisk', ['-p', dev])).replace(/^Disk \/dev\/\S+:/m, 'Disk:')];
  const table = await readPartitionTable(dev);
  for (const p of table.partitions) lines.push(await run('sgdisk', ['-i', String(p.index), dev]));
  return lines.join('\n');
}

/** Bytes before the first and after the last partition (tables, gap, backup GPT) of a file. */
function outsideRegions(table: PartitionTable, size: number): Region[] {
  const first = Math.min(...table.partitions.map((p) => p.start));
  const last = Math.max(...table.partitions.map((p) => p.start + p.size));
  return [{ name: 'before the first partition', offset: 0, length: first }, { name: 'after the last partition', offset: last, length: size - last }];
}

async function fourKSectors(t: Tap, work: string): Promise<void> {
  const dir = join(work, '4k');
  await run('mkdir', ['-p', dir]);
  const src = join(dir, 'src.raw');
  await run('truncate', ['-s', `${512 * MiB}`, src]);
  await withPartscan(src, async (loop) => {
    // sgdisk on the 4K device: LBAs are 4 KiB (first usable LBA 6, entries in LBA 2..5)
    await run('sgdisk', ['-U', '4b000000-0000-4000-8000-000000000000',
      '-n1:256:+64M', '-t1:8300', '-c1:ext4-4k', '-u1:4b000000-0000-4000-8000-000000000001',
      '-n2:0:+320M', '-t2:8300', '-c2:xfs-4k', '-u2:4b000000-0000-4000-8000-000000000002',
      '-n3:0:+64M', '-t3:ef00', '-c3:vfat-4k', '-u3:4b000000-0000-4000-8000-000000000003', loop.dev]);
    await run('partx', ['-u', loop.dev]).catch(() => '');
    const [p1, p2, p3] = [await loopPartition(loop, 1), await loopPartition(loop, 2), await loopPartition(loop, 3)];
    await run('mkfs.ext4', ['-q', '-F', '-L', 'ext4-4k', '-U', '4b000000-0000-4000-8000-0000000000e4', '-E', 'lazy_itable_init=0,lazy_journal_init=0', p1]);
    await run('mkfs.xfs', ['-q', '-f', '-L', 'xfs-4k', '-m', 'uuid=4b000000-0000-4000-8000-0000000000f5', p2]);
    await run('mkfs.vfat', ['-S', '4096', '-n', 'VFAT4K', '-i', '4B000004', p3]);
    for (const [dev, seed] of [[p1, '4k-ext4'], [p2, '4k-xfs']] as const) await withMount(dev, 'rw', (d) => fillTree(d, seed));
    // vfat content with mtools through the partition node (the kernel may lack vfat)
    await run('bash', [DISK_SCRIPT, 'fill-vfat', p3, '4k-vfat', '4']);
  }, { sectorSize: 4096 });
  const srcSha = await sha256File(src);
  const srcSize = await sizeOf(src);

  // the source as the 4K device sees it
  const srcLoop = await attachLoop(src, { readOnly: true, partscan: false, sectorSize: 4096 });
  t.teardown(() => srcLoop.detach());
  const srcTable = await readPartitionTable(srcLoop.dev);
  t.equal(srcTable.label, 'gpt', 'the 4K device holds a GPT');
  t.equal(srcTable.partitions.length, 3, 'three partitions');
  const srcGpt = await gptDescription(srcLoop.dev);
  t.match(srcGpt, /Sector size \(logical(\/physical)?\): 4096(\/\d+)? bytes/, 'sgdisk reads it at 4096-byte sectors');
  const srcDigests = await digestAll(srcLoop.dev);
  const srcIds = await fsIds(srcLoop.dev, srcTable);

  const runs: [string, string][] = [['the read-only 4K loop device', srcLoop.dev], ['the image file', src]];
  const hashes: string[] = [];
  for (const [what, source] of runs) {
    await t.test(`from ${what}`, async (t) => {
      const out = join(dir, 'out.qcow2');
      const m = await imageOk(t, source, out);
      if (!m) return;
      t.equal(m.partitionTable.type, 'gpt', 'GPT');
      t.equal(m.partitionTable.sectorSize, 4096, 'manifest: sectorSize 4096');
      t.equal(m.source.size, srcSize, 'source size');
      t.same(m.partitions.map((p) => [p.index, p.start, p.size]), srcTable.partitions.map((p) => [p.index, p.start, p.size]),
        'partitions at their 4K-LBA byte offsets');
      t.same(m.partitions.map((p) => p.fs), ['ext4', 'xfs', 'vfat'], 'ext4, xfs, vfat recognised');
      for (const p of m.partitions) t.ok(p.usedBytes < p.size / 2, `partition ${p.index}: only used blocks (${mib(p.usedBytes)} of ${mib(p.size)})`);
      t.ok((await qemuImgCheck(out)).clean, 'qemu-img check clean');
      hashes.push(await sha256File(out));
      const back = join(dir, 'back.raw');
      await convertToRaw(out, back);
      t.same(await compareRegions(src, back, outsideRegions(srcTable, srcSize)), [], 'GPT (both copies) and gaps byte for byte');
      const blocks = await compareBlocks(src, back, 4096);
      t.equal(blocks.mismatchedBytes, 0, 'every 4 KiB block is the source\'s or zeros', { firstMismatches: blocks.firstMismatches });
      const backLoop = await attachLoop(back, { readOnly: true, sectorSize: 4096 });
      try {
        t.equal(await gptDescription(backLoop.dev), srcGpt, 'sgdisk -p / -i on a 4K loop of the output: the same GPT');
        const backTable = await readPartitionTable(backLoop.dev);
        t.same(backTable, srcTable, 'same partition table (sfdisk)');
        t.same(await fsIds(backLoop.dev, backTable), srcIds, 'filesystem types, UUIDs and labels (blkid)');
        sameDigests(t, srcDigests, await digestAll(backLoop.dev), 3);
      } finally {
        await backLoop.detach();
      }
      await rmf(back, out);
    });
  }
  t.equal(hashes.length === 2 && hashes[0] === hashes[1], true, 'device and file give the same qcow2 bytes');
  t.equal(await sha256File(src), srcSha, 'the source is unchanged');
}

// ---------------------------------------------------------------------------------------------
// c. MBR with logical partitions

const MBR_LOGICALS = [
  'label: dos',
  'label-id: 0x10c1ca15',
  'start=2048, size=32MiB, type=83',
  'type=5',
  'size=64MiB, type=83',
  'size=320MiB, type=83',
  'size=64MiB, type=c',
].join('\n');

async function mbrLogicals(t: Tap, work: string): Promise<void> {
  const dir = join(work, 'mbr');
  await run('mkdir', ['-p', dir]);
  const src = join(dir, 'src.raw');
  await run('truncate', ['-s', `${520 * MiB}`, src]);
  await run('sfdisk', ['--quiet', src], { input: MBR_LOGICALS });
  await withPartscan(src, async (loop) => {
    const [p1, p5, p6, p7] = [await loopPartition(loop, 1), await loopPartition(loop, 5), await loopPartition(loop, 6), await loopPartition(loop, 7)];
    await run('mkfs.ext4', ['-q', '-F', '-L', 'primary', '-E', 'lazy_itable_init=0,lazy_journal_init=0', p1]);
    await run('mkfs.ext4', ['-q', '-F', '-L', 'logical-ext4', '-E', 'lazy_itable_init=0,lazy_journal_init=0', p5]);
    await run('mkfs.xfs', ['-q', '-f', '-L', 'logical-xfs', p6]);
    await run('mkfs.vfat', ['-n', 'LOGICALFAT', p7]);
    for (const [dev, seed] of [[p1, 'mbr-p1'], [p5, 'mbr-p5'], [p6, 'mbr-p6']] as const) await withMount(dev, 'rw', (d) => fillTree(d, seed));
    await run('bash', [DISK_SCRIPT, 'fill-vfat', p7, 'mbr-p7', '4']);
  });
  const srcSha = await sha256File(src);
  const table = await readPartitionTable(src);
  t.same(table.partitions.map((p) => p.index), [1, 2, 5, 6, 7], 'primary, extended, three logicals');
  const srcDigests = await digestAll(src);
  const srcIds = await fsIds(src, table);

  const out = join(dir, 'out.qcow2');
  const m = await imageOk(t, src, out);
  if (!m) return;
  t.equal(m.partitionTable.type, 'mbr', 'MBR');
  const fsOf = (i: number) => m.partitions.find((p) => p.index === i)?.fs;
  t.same([fsOf(1), fsOf(5), fsOf(6), fsOf(7)], ['ext4', 'ext4', 'xfs', 'vfat'], 'filesystems in the logical partitions recognised');
  for (const i of [5, 6, 7]) {
    const p = m.partitions.find((x) => x.index === i)!;
    t.ok(p.usedBytes < p.size / 2, `logical ${i}: only used blocks (${mib(p.usedBytes)} of ${mib(p.size)})`);
  }
  t.ok((await qemuImgCheck(out)).clean, 'qemu-img check clean');
  const back = join(dir, 'back.raw');
  await convertToRaw(out, back);
  t.same(await comparePartitionTables(src, back), [], 'MBR, EBR chain and gap identical');
  t.same(await readPartitionTable(back), table, 'same partition table (sfdisk)');
  t.same(await fsIds(back, table), srcIds, 'filesystem types, UUIDs and labels (blkid)');
  const blocks = await compareBlocks(src, back);
  t.equal(blocks.mismatchedBytes, 0, 'every sector is the source\'s or zeros', { firstMismatches: blocks.firstMismatches });
  sameDigests(t, srcDigests, await digestAll(back), 4);
  t.equal(await sha256File(src), srcSha, 'the source is unchanged');
  await rmf(src, back, out);
}

// ---------------------------------------------------------------------------------------------
// d. btrfs and an LVM PV

/** The host's lvm confined to DEV (filters), no device-mapper, no udev, nothing written to the host. */
function lvmConfig(dev: string): string {
  const accept = `"a|^${dev}$|","r|.*|"`;
  return `devices{filter=[${accept}] global_filter=[${accept}] use_devicesfile=0 hints="none" obtain_device_list_from_udev=0}
    global{activation=0 event_activation=0 use_lvmpolld=0} backup{backup=0 archive=0}
    activation{udev_sync=0 udev_rules=0 monitoring=0}`;
}

async function lvm(dev: string, args: string[], readOnly = false): Promise<string> {
  const [cmd, ...rest] = args;
  return run('lvm', [cmd!, '--nolocking', ...(readOnly ? ['--readonly'] : []), '--config', lvmConfig(dev), ...rest],
    { env: { LC_ALL: 'C', LVM_SUPPRESS_FD_WARNINGS: '1' } });
}

/** What lvm reports of the PV in partition INDEX of RAW (read-only loop). */
async function lvmReport(raw: string, index: number): Promise<string> {
  return withPartscan(raw, async (loop) => {
    const pv = await loopPartition(loop, index);
    const fields = ['pvs', '--noheadings', '--nosuffix', '--units', 'b', '-o', 'pv_uuid,pv_size,pe_start,vg_name,vg_uuid,vg_extent_size,vg_extent_count,vg_free_count,vg_seqno'];
    const lvs = ['lvs', '--noheadings', '--nosuffix', '--units', 'b', '-o', 'lv_name,lv_uuid,lv_size,seg_start_pe,seg_pe_ranges,segtype'];
    const vgs = ['vgs', '--noheadings', '-o', 'vg_name,vg_uuid,pv_count,lv_count,vg_attr'];
    const out = [await lvm(pv, fields, true), await lvm(pv, vgs, true), await lvm(pv, lvs, true)];
    return out.map((s) => s.replace(new RegExp(pv, 'g'), 'PV').trim()).join('\n');
  }, { readOnly: true });
}

async function btrfsDigest(raw: string, index: number): Promise<TreeDigest> {
  const p = (await readPartitionTable(raw)).partitions.find((x) => x.index === index)!;
  return withReadOnlyWindow(raw, p.start, p.size, (dev) => withMount(dev, 'ro', (d) => digestDirectory('btrfs', d)));
}

const PV_UUID = 'Rbst00-0000-0000-0000-0000-0000-000001';

async function unparsed(t: Tap, work: string): Promise<void> {
  const dir = join(work, 'unparsed');
  await run('mkdir', ['-p', dir]);
  const src = join(dir, 'src.raw');
  await run('truncate', ['-s', `${320 * MiB}`, src]);
  await run('sgdisk', ['-U', 'b7f50000-0000-4000-8000-000000000000', '-n1:2048:+160M', '-t1:8300', '-c1:btrfs',
    '-n2:0:+128M', '-t2:8e00', '-c2:lvm', src]);
  let lvWindow = { offset: 0, size: 0 };
  await withPartscan(src, async (loop) => {
    const p1 = await loopPartition(loop, 1);
    const p2 = await loopPartition(loop, 2);
    await run('mkfs.btrfs', ['-q', '-f', '-L', 'robust-btrfs', '-U', 'b7f50000-0000-4000-8000-0000000000b1', p1]);
    await withMount(p1, 'rw', (d) => fillTree(d, 'btrfs'));
    await lvm(p2, ['pvcreate', '-u', PV_UUID, '--norestorefile', p2]);
    await lvm(p2, ['vgcreate', '--setautoactivation', 'n', 'robustvg', p2]);
    await lvm(p2, ['lvcreate', '-an', '-Zn', '-Wn', '-l', '60%VG', '-n', 'data', 'robustvg']);
    // a host with udev rules may have recorded the PV as online: forget it
    await runUnchecked('rm', ['-f', `/run/lvm/pvs_online/${PV_UUID.replace(/-/g, '')}`]);
  });
  // recognisable data straight into the LV's extents, through a loop device at its offset
  const located = (await run('bash', [join(REPO_ROOT, 'test/lib/lvm-image.sh'), src, 'robustvg', 'data'])).split(' ').map(Number);
  lvWindow = { offset: located[0]!, size: located[1]! };
  t.ok(lvWindow.size > 32 * MiB, `LV robustvg/data at byte ${lvWindow.offset}, ${mib(lvWindow.size)}`);
  const lvLoop = await attachLoop(src, { offset: lvWindow.offset, sizeLimit: lvWindow.size });
  try {
    const fh = await open(lvLoop.dev, 'r+');
    try {
      await fh.write(await randomBytes('lv-head', 3 * MiB), 0, 3 * MiB, 0);
      await fh.write(await randomBytes('lv-middle', MiB + 4321), 0, MiB + 4321, 20 * MiB + 777);
      await fh.write(Buffer.from('BMSNAP LV TAIL MARKER\n'), 0, 22, lvWindow.size - 512);
      await fh.sync();
    } finally {
      await fh.close();
    }
  } finally {
    await lvLoop.detach();
  }
  const srcSha = await sha256File(src);
  const table = await readPartitionTable(src);
  const [pb, pl] = [table.partitions[0]!, table.partitions[1]!];
  const srcBtrfs = await btrfsDigest(src, 1);
  const srcLvm = await lvmReport(src, 2);
  t.match(srcLvm, /robustvg/, 'the source PV holds robustvg');
  t.match(srcLvm, /data/, 'and LV data');
  t.comment(srcLvm);
  const srcIds = await fsIds(src, table);

  const out = join(dir, 'out.qcow2');
  const m = await imageOk(t, src, out);
  if (!m) return;
  for (const p of m.partitions) {
    t.equal(p.method, 'whole partition (unknown content, zero blocks dropped)', `partition ${p.index}: "${p.method}"`);
    t.equal(p.fs, null, `partition ${p.index}: no filesystem claimed`);
  }
  t.ok(m.warnings.some((w) => /partition 1: no known filesystem/.test(w)), 'a warning for the btrfs');
  t.ok(m.warnings.some((w) => /partition 2: no known filesystem/.test(w)), 'a warning for the PV');
  t.ok((m.qcow2?.zeroClusters ?? 0) > 0, `zero blocks dropped: ${m.qcow2?.zeroClusters} all-zero clusters not stored`);
  const outSize = (await stat(out)).size;
  t.ok(outSize < pb.size + pl.size, `qcow2 ${mib(outSize)} < the two partitions (${mib(pb.size + pl.size)})`);
  t.ok((await qemuImgCheck(out)).clean, 'qemu-img check clean');

  const back = join(dir, 'back.raw');
  await convertToRaw(out, back);
  t.same(await comparePartitionTables(src, back), [], 'GPT and gap identical');
  t.same(await compareRegions(src, back, [{ name: 'btrfs partition', offset: pb.start, length: pb.size }]), [], 'btrfs partition byte for byte');
  t.same(await compareRegions(src, back, [{ name: 'PV', offset: pl.start, length: pl.size }]), [], 'PV region byte for byte');
  t.same(await fsIds(back, table), srcIds, 'blkid: btrfs UUID, LVM2_member UUID identical');
  sameTree(t, 'btrfs', srcBtrfs, await btrfsDigest(back, 1));
  t.equal(await lvmReport(back, 2), srcLvm, 'pvs/vgs/lvs on the output: same PV, VG, LV and UUIDs');
  t.equal(await sha256File(src), srcSha, 'the source is unchanged');
  await rmf(src, back, out);
}

// ---------------------------------------------------------------------------------------------
// e. 2 TiB

async function hugeDisk(t: Tap, work: string): Promise<void> {
  const dir = join(work, 'huge');
  await run('mkdir', ['-p', dir]);
  const src = join(dir, 'src.raw');
  await run('bash', [SCALE_DISK, src, '2T']);
  const size = await sizeOf(src);
  t.equal(size, 2 * 1024 * GiB, '2 TiB sparse disk');
  // (2 TiB of holes is not hashed in a test: its size, allocation and mtime are compared instead)
  const srcStat = await stat(src);
  const table = await readPartitionTable(src);
  const srcDigest = await treeDigest(src, 1);
  const filesBytes = srcDigest.entries.reduce((n, l) => n + Number(/\tblocks=(\d+)/.exec(l)?.[1] ?? 0) * 512, 0);
  t.ok(filesBytes > GiB && filesBytes < 1.05 * GiB, `files allocate ${mib(filesBytes)}`);

  const out = join(dir, 'out.qcow2');
  const m = await imageOk(t, src, out);
  if (!m) return;
  t.equal(m.partitions[0]?.fs, 'ext4', 'ext4');
  t.match(m.partitions[0]?.method, /^ext4 block bitmaps/, 'mapped by its bitmaps');
  // what a 2 TiB ext4 must keep beyond the files: 2 bitmaps per 128 MiB group (64 MiB per TiB),
  // group descriptors and their backups, the 64 MiB journal, the used inodes
  const metadataAllowance = 384 * MiB;
  t.ok(m.usedBytes < 1.1 * GiB + metadataAllowance,
    `usedBytes ${mib(m.usedBytes)} < 1.1 GiB + ${mib(metadataAllowance)} of metadata (it would be tens of GiB if the map followed the disk size)`);
  const outSize = (await stat(out)).size;
  t.ok(outSize < filesBytes, `qcow2 ${mib(outSize)} < the files' ${mib(filesBytes)}`);
  // qcow2 metadata: one 64 KiB L2 table per 512 MiB range holding a mapped cluster. ext4 puts
  // block bitmaps in every flex group (one per 2 GiB), so ~1024 tables (64 MiB, 1/32768 of the
  // disk) are laid out before the data is read. On a real disk those bitmap blocks hold bytes and
  // need the tables; here they are sparse zeros, so the tables come out empty (docs/benchmarks.md).
  const metadataBytes = m.qcow2?.metadataBytes ?? Infinity;
  t.ok(metadataBytes <= (size / (512 * MiB)) * 64 * 1024 + 4 * MiB, `qcow2 metadata ${mib(metadataBytes)}: at most one L2 table per 512 MiB of disk`);
  t.comment(`2 TiB: ${m.seconds.toFixed(1)} s, usedBytes ${mib(m.usedBytes)}, qcow2 ${mib(outSize)}`);
  t.ok((await qemuImgCheck(out)).clean, 'qemu-img check clean');

  const back = join(dir, 'back.raw');
  await convertToRaw(out, back);
  t.equal(await sizeOf(back), size, 'converted back: 2 TiB');
  t.same(await compareRegions(src, back, outsideRegions(table, size)), [], 'GPT (both copies) identical');
  sameTree(t, 'the 2 TiB ext4', srcDigest, await treeDigest(back, 1));
  const after = await stat(src);
  t.same([after.size, after.blocks, after.mtimeMs], [srcStat.size, srcStat.blocks, srcStat.mtimeMs], 'the source is unchanged (size, allocation, mtime)');
  await rmf(src, back, out);
}

// ---------------------------------------------------------------------------------------------
// f. corruption

const FLIPS_PER_FS = 5;

async function corruptedMetadata(t: Tap, work: string): Promise<void> {
  const dir = join(work, 'corrupt');
  await run('mkdir', ['-p', dir]);
  const src = join(dir, 'pristine.raw');
  await run('truncate', ['-s', `${368 * MiB}`, src]);
  await run('sgdisk', ['-U', 'c0bb0000-0000-4000-8000-000000000000', '-n1:2048:+32M', '-t1:8300', '-c1:ext4',
    '-n2:0:+300M', '-t2:8300', '-c2:xfs', '-n3:0:+33M', '-t3:ef00', '-c3:esp', src]);
  await withPartscan(src, async (loop) => {
    const [p1, p2, p3] = [await loopPartition(loop, 1), await loopPartition(loop, 2), await loopPartition(loop, 3)];
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'lazy_itable_init=0,lazy_journal_init=0', p1]);
    await run('mkfs.xfs', ['-q', '-f', p2]);
    await run('mkfs.vfat', ['-F', '32', '-s', '1', p3]);
    for (const [dev, seed] of [[p1, 'c-ext4'], [p2, 'c-xfs']] as const) await withMount(dev, 'rw', (d) => fillTree(d, seed));
    await run('bash', [DISK_SCRIPT, 'fill-vfat', p3, 'c-vfat', '2']);
  });
  const table = await readPartitionTable(src);
  const [e, x, v] = [table.partitions[0]!, table.partitions[1]!, table.partitions[2]!];
  const size = await sizeOf(src);
  const srcSha = await sha256File(src);
  const pristineOut = join(dir, 'pristine.qcow2');
  const pristine = await imageOk(t, src, pristineOut, 'pristine disk');
  if (!pristine) return;
  const pristineBack = join(dir, 'pristine-back.raw');
  await convertToRaw(pristineOut, pristineBack);
  await rmf(pristineOut);

  const fat = Buffer.alloc(512);
  const fh = await open(src, 'r');
  await fh.read(fat, 0, 512, v.start);
  await fh.close();
  const fatReserved = fat.readUInt16LE(14) * 512;
  const fatSize = fat.readUInt32LE(36) * 512;
  const sets: [string, Target[]][] = [
    ['ext4', [
      { name: 'ext4 superblock', offset: e.start + 1024, length: 1024 },
      { name: 'ext4 group descriptors', offset: e.start + 4096, length: 4096 },
    ]],
    ['xfs', [
      { name: 'xfs superblock', offset: x.start, length: 512 },
      { name: 'xfs AGF', offset: x.start + 512, length: 512 },
      { name: 'xfs AGI', offset: x.start + 1024, length: 512 },
    ]],
    ['vfat', [
      { name: 'FAT32 boot sector', offset: v.start, length: 512 },
      { name: 'FAT32 first FAT', offset: v.start + fatReserved, length: Math.min(fatSize, 16384) },
    ]],
    ['GPT', [
      { name: 'primary GPT header', offset: 512, length: 92 },
      { name: 'primary GPT entries', offset: 1024, length: 3 * 128 },
      { name: 'backup GPT header', offset: size - 512, length: 92 },
    ]],
  ];
  const outcomes: string[] = [];
  for (const [k, [fs, targets]] of sets.entries()) {
    const rand = prng(0x11000 + k);
    for (let c = 0; c < FLIPS_PER_FS; c++) {
      const { target, patches } = corruption(rand, targets, 4);
      const label = `${fs} case ${c} (${target.name}, bytes ${patches.map((p) => p.offset).join(',')})`;
      await t.test(label, async (t) => {
        const damaged = await sparseCopy(src, join(dir, 'damaged.raw'));
        const flipped: number[] = [];
        const f = await open(damaged, 'r+');
        try {
          for (const p of patches) {
            const b = Buffer.alloc(1);
            await f.read(b, 0, 1, p.offset);
            b[0] = b[0]! ^ p.bytes[0]!;
            await f.write(b, 0, 1, p.offset);
            flipped.push(p.offset);
          }
        } finally {
          await f.close();
        }
        const outDir = await makeTempDir('bmsnap-robust-out-');
        try {
          const out = join(outDir, 'out.qcow2');
          const r = await bmsnap(['image', damaged, '-o', out, '--json', '--manifest', join(outDir, 'manifest.json')]);
          t.notOk(/^\s+at /m.test(r.stderr), 'no stack trace');
          if (r.exitCode === 0) {
            const m = JSON.parse(r.stdout) as Manifest;
            outcomes.push(`${label}: imaged (${m.partitions.map((p) => `${p.index}:${p.method}`).join('; ')})`);
            const back = join(dir, 'damaged-back.raw');
            await convertToRaw(out, back);
            const c = await compareWithPristine(damaged, back, pristineBack, flipped);
            t.same(c.mismatched, [], 'imaged: every sector is the damaged source\'s or zeros');
            t.same(c.lost, [], 'every sector the pristine run kept (and every flipped byte) is kept, as damaged');
            await rmf(back);
          } else {
            outcomes.push(`${label}: refused: ${r.stderr.trim()}`);
            const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
            t.equal(lines.length, 1, 'refused: exactly one line on stderr', { stderr: r.stderr });
            t.match(lines[0] ?? '', /^bmsnap: \S/, 'it starts with "bmsnap: "');
            t.notMatch(r.stderr, /internal error/, 'reported as bad input, not as a bug');
            t.same(await readdir(outDir), [], 'no output, manifest or temp file left behind');
          }
        } finally {
          await removeTempDir(outDir);
          await rmf(damaged);
        }
      });
    }
  }
  t.comment(outcomes.join('\n'));
  t.equal(await sha256File(src), srcSha, 'the pristine source is unchanged');
  await rmf(src, pristineBack);
}

/**
 * One pass over the damaged source, its image converted back and the pristine image converted
 * back. mismatched: sectors of the image that are neither the damaged source's nor zeros. lost:
 * sectors the pristine image holds non-zero (what the pristine map kept) or that hold a flipped
 * byte, where the image does not hold the damaged source's bytes. The first few of each.
 */
async function compareWithPristine(damaged: string, back: string, pristineBack: string, flipped: number[]): Promise<{ mismatched: number[]; lost: number[] }> {
  const CHUNK = 4 * MiB;
  const size = await sizeOf(damaged);
  if ((await sizeOf(back)) !== size) return { mismatched: [-1], lost: [] };
  const flippedSectors = new Set(flipped.map((o) => Math.floor(o / 512)));
  const files = [await open(damaged, 'r'), await open(back, 'r'), await open(pristineBack, 'r')];
  const mismatched: number[] = [];
  const lost: number[] = [];
  const zero = Buffer.alloc(512);
  const bufs = [Buffer.alloc(CHUNK), Buffer.alloc(CHUNK), Buffer.alloc(CHUNK)] as const;
  try {
    for (let off = 0; off < size; off += CHUNK) {
      const len = Math.min(CHUNK, size - off);
      for (const [i, f] of files.entries()) {
        bufs[i]!.fill(0);
        await f.read(bufs[i]!, 0, len, off);
      }
      const [d, b, p] = bufs;
      if (d.equals(b)) continue; // nothing dropped or changed here
      for (let i = 0; i < len; i += 512) {
        if (d.compare(b, i, i + 512, i, i + 512) === 0) continue;
        const sector = off + i;
        if (zero.compare(b, i, i + 512) !== 0) { if (mismatched.length < 8) mismatched.push(sector); continue; }
        // zeroed in the image: fine unless the pristine run kept it or a byte was flipped there
        if (zero.compare(p, i, i + 512) !== 0 || flippedSectors.has(sector / 512)) { if (lost.length < 8) lost.push(sector); }
      }
    }
  } finally {
    for (const f of files) await f.close();
  }
  return { mismatched, lost };
}
