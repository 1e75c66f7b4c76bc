// End-to-end tests of `bmsnap image` (the built CLI, dist/agent/src/cli/main.js) on every test
// disk layout (see test/lib/disks.ts), plus the error contract: bad input gives one
// `bmsnap: <message>` line, a non-zero exit and no output file.
import t, { type Test } from 'tap';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ALL_LAYOUTS, attachLoop, buildDisk, makeTempDir, readPartitionTable, removeTempDir, run, writeAt,
  type LayoutName, type TestDisk,
} from '../lib/disks.js';
import { CLI, bmsnap } from '../lib/cli.js';
import {
  compareBlocks, comparePartitionTables, compareRegions, convertToRaw, countStaleSectors, digestAll, fsckAll, hashFile, qemuImgCheck,
  qemuImgInfo, sha256File, type TreeDigest,
} from '../lib/verify.js';

/**
 * Share of the source's stale sectors (deleted data, tagged by the builders) allowed to survive in
 * an image. Free space is not copied, so ~0; the slack covers allocated-but-unwritten tails such
 * as the rest of a FAT cluster after a short file (an ideal copy, e2image -ra, leaves 0).
 */
const STALE_SURVIVING_MAX = 0.01;


// The product's own manifest type: the test reads what the CLI prints.
type Manifest = import('../../agent/src/image-disk.js').Manifest;

if (!existsSync(CLI)) {
  t.fail(`${CLI} is missing: run npm run build (npm ci does it)`);
} else {
  await main();
}

async function main(): Promise<void> {
  const work = await makeTempDir('bmsnap-e2e-');
  const disks = new Map<LayoutName, TestDisk>();
  t.teardown(async () => {
    for (const d of disks.values()) await d.cleanup();
    await removeTempDir(work);
  });

  for (const layout of ALL_LAYOUTS) {
    t.test(`image ${layout}`, async (t) => {
      const disk = await buildDisk(layout, work);
      disks.set(layout, disk);
      t.comment(disk.description);
      await imageLayoutTests(t, disk, work);
    });
  }

  t.test('bad input: one "bmsnap:" line, non-zero exit, no output left', async (t) => {
    await errorTests(t, work, disks);
  });
}

type Tap = Test;

async function imageLayoutTests(t: Tap, disk: TestDisk, work: string): Promise<void> {
  const dir = join(work, disk.layout);
  await run('mkdir', ['-p', dir]);
  const srcSha = await sha256File(disk.path);
  const srcDigests = await digestAll(disk.path);
  const srcStale = await countStaleSectors(disk.path);
  t.ok(srcStale > 0.5 * (disk.staleBytes / 512), `the source holds ${srcStale} sectors of deleted data`);
  const out = join(dir, 'out.qcow2');
  let srcNonZeroBytes = NaN;
  const manifestPath = join(dir, 'manifest.json');

  const first = await bmsnap(['image', disk.path, '-o', out, '--json', '--manifest', manifestPath]);
  t.equal(first.exitCode, 0, `bmsnap image exits 0 (${first.seconds} s)`, { stderr: first.stderr });
  if (first.exitCode !== 0) return;
  const manifest = JSON.parse(first.stdout) as Manifest;
  const outSha512 = await hashFile(out, 'sha512');
  const back = join(dir, 'back.raw');

  await t.test('qcow2 is healthy and describes the whole disk', async (t) => {
    const check = await qemuImgCheck(out);
    t.ok(check.clean, 'qemu-img check clean', { report: check.report, stderr: check.stderr });
    const info = await qemuImgInfo(out);
    t.equal(info.format, 'qcow2');
    t.equal(info['virtual-size'], disk.size, 'virtual size = source size');
    const specific = (info['format-specific'] as { data?: { 'compression-type'?: string } } | undefined)?.data;
    t.equal(specific?.['compression-type'], manifest.compression, 'qcow2 compression type matches the manifest');
  });

  await convertToRaw(out, back);
  const backSha = await sha256File(back);

  await t.test('converted back: tables, verbatim regions, sectors, fsck, trees', async (t) => {
    t.same(await comparePartitionTables(disk.path, back), [], 'partition tables, gap, BIOS boot, unknown partitions identical');
    const blocks = await compareBlocks(disk.path, back);
    srcNonZeroBytes = blocks.srcNonZeroBytes;
    t.equal(blocks.mismatchedBytes, 0, 'every sector is either the source\'s or zeros', { firstMismatches: blocks.firstMismatches });
    const outStale = await countStaleSectors(back);
    t.ok(outStale <= STALE_SURVIVING_MAX * srcStale,
      `deleted data dropped: ${outStale} of the source's ${srcStale} stale sectors survive (max ${STALE_SURVIVING_MAX * 100}%)`);
    t.comment(`${mib(blocks.zeroedBytes)} of non-zero source sectors came out as zeros`);
    t.ok(blocks.outNonZeroBytes <= manifest.usedBytes, 'non-zero output lies within the bytes the manifest calls used');
    for (const r of await fsckAll(back)) t.ok(r.ok, `fsck partition ${r.index} (${r.fs ?? 'none'})`, { output: r.output });
    const digests = await digestAll(back);
    t.same([...digests.keys()], [...srcDigests.keys()], 'same filesystems');
    for (const [i, d] of srcDigests) sameTree(t, i, d, digests.get(i));
  });

  await t.test('manifest', async (t) => {
    t.same(JSON.parse(await readFile(manifestPath, 'utf8')), manifest, '--manifest file = --json output');
    await checkManifest(t, manifest, disk, out, outSha512);
  });

  await t.test('smaller than the source\'s non-zero content', async (t) => {
    const outSize = (await stat(out)).size;
    const nonZero = srcNonZeroBytes;
    t.ok(outSize < nonZero - disk.staleBytes / 2,
      `qcow2 ${mib(outSize)} < source non-zero ${mib(nonZero)} - half the stale ${mib(disk.staleBytes)}`);
    t.comment(`source ${mib(disk.size)} (non-zero ${mib(nonZero)}), qcow2 ${mib(outSize)}, run ${first.seconds} s`);
  });

  await t.test('deterministic: a second run gives the same bytes', async (t) => {
    const again = join(dir, 'again.qcow2');
    const r = await bmsnap(['image', disk.path, '-o', again, '--quiet']);
    t.equal(r.exitCode, 0, 'second run exits 0', { stderr: r.stderr });
    const chatter = r.stderr.split('\n').filter((l) => l.trim() !== '' && !isWarningOrWorse(l));
    t.same(chatter, [], '--quiet: no progress or info lines (warnings allowed)');
    t.equal(await hashFile(again, 'sha512'), outSha512, 'same sha512');
    await run('rm', ['-f', again]);
  });

  await t.test('-o - into a pipe gives the same bytes as -o FILE, whatever the stream cache', async (t) => {
    // default (whole image cached), none (every cluster compressed twice), and a cache that
    // runs out part-way (cached prefix, recompressed rest)
    for (const cache of [undefined, '0', '1M']) {
      const extra = cache === undefined ? '' : `--stream-cache ${cache}`;
      const r = await execa('bash', ['-c', `set -o pipefail; node "$1" image "$2" -o - --quiet ${extra} | sha512sum`, 'pipe', CLI, disk.path],
        { reject: false, stdin: 'ignore', env: { NODE_OPTIONS: '' } });
      t.equal(r.exitCode, 0, `pipeline exits 0 (${extra || 'default cache'})`, { stderr: r.stderr });
      t.equal(String(r.stdout).split(' ')[0], outSha512, `same sha512 through a pipe (${extra || 'default cache'})`);
    }
    const bad = await bmsnap(['image', disk.path, '-o', '-', '--stream-cache', 'lots']);
    t.not(bad.exitCode, 0, 'a bad --stream-cache size is refused');
    t.match(bad.stderr, /^bmsnap: .*--stream-cache wants a size/m, 'with a one-line error');
  });

  await t.test('--format raw: the same disk as the qcow2 (so it passes the same checks)', async (t) => {
    const raw = join(dir, 'out.raw');
    const r = await bmsnap(['image', disk.path, '-o', raw, '--format', 'raw', '--quiet']);
    t.equal(r.exitCode, 0, 'exits 0', { stderr: r.stderr });
    t.equal((await stat(raw)).size, disk.size, 'raw output has the source\'s size');
    t.equal(await sha256File(raw), backSha, 'raw output = the verified qcow2 output converted to raw');
    await run('rm', ['-f', raw]);
  });

  if (disk.layout === 'gpt') {
    await t.test('--compress zlib and none: valid, and the same disk', async (t) => {
      for (const codec of ['zlib', 'none']) {
        const q = join(dir, `out-${codec}.qcow2`);
        const r = await bmsnap(['image', disk.path, '-o', q, '--compress', codec, '--json']);
        t.equal(r.exitCode, 0, `${codec}: exits 0`, { stderr: r.stderr });
        t.equal((JSON.parse(r.stdout) as Manifest).compression, codec, `${codec}: manifest says so`);
        t.ok((await qemuImgCheck(q)).clean, `${codec}: qemu-img check clean`);
        const info = await qemuImgInfo(q);
        if (codec === 'zlib') t.equal((info['format-specific'] as { data: { 'compression-type': string } }).data['compression-type'], 'zlib');
        const same = await execa('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', out, q], { reject: false });
        t.equal(same.exitCode, 0, `${codec}: same disk contents as zstd (qemu-img compare)`, { stderr: String(same.stderr) });
        await run('rm', ['-f', q]);
      }
    });
  }

  if (disk.layout === 'gpt' || disk.layout === 'mbr') {
    await t.test('a read-only loop block device as SOURCE', async (t) => {
      const loop = await attachLoop(disk.path, { readOnly: true });
      t.teardown(() => loop.detach());
      const q = join(dir, 'from-device.qcow2');
      const r = await bmsnap(['image', loop.dev, '-o', q, '--json']);
      t.equal(r.exitCode, 0, 'exits 0', { stderr: r.stderr });
      if (r.exitCode !== 0) return;
      const m = JSON.parse(r.stdout) as Manifest;
      t.equal(m.source.path, loop.dev);
      t.equal(m.source.size, disk.size);
      t.ok((await qemuImgCheck(q)).clean, 'qemu-img check clean');
      t.equal(await hashFile(q, 'sha512'), outSha512, 'same bytes as from the image file (same disk contents)');
      await run('rm', ['-f', q]);
    });
  }

  t.equal(await sha256File(disk.path), srcSha, 'the source is unchanged after every run');
  await run('rm', ['-f', back, out]);
}

/** A pino JSON line at warn level or above, or a plain "bmsnap: warning" line. */
function isWarningOrWorse(line: string): boolean {
  try {
    return (JSON.parse(line) as { level?: number }).level! >= 40;
  } catch {
    return /^bmsnap: (warning|warn)\b/i.test(line);
  }
}

function sameTree(t: Tap, index: number, src: TreeDigest, out: TreeDigest | undefined): void {
  if (out?.digest === src.digest) {
    t.pass(`partition ${index} (${src.fs}): tree identical (${src.entries.length} entries)`);
    return;
  }
  // show only the differing lines
  const a = new Set(src.entries);
  const b = new Set(out?.entries ?? []);
  t.fail(`partition ${index} (${src.fs}): tree differs`, {
    onlyInSource: src.entries.filter((l) => !b.has(l)).slice(0, 20),
    onlyInOutput: (out?.entries ?? []).filter((l) => !a.has(l)).slice(0, 20),
  });
}

const TABLE_TYPE: Record<string, string> = { gpt: 'gpt', dos: 'mbr', null: 'none' };
const KNOWN_FS = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'vfat', 'swap']);

async function checkManifest(t: Tap, m: Manifest, disk: TestDisk, out: string, sha512: string): Promise<void> {
  t.equal(m.tool, 'bmsnap');
  t.type(m.version, 'string');
  t.equal(m.source.path, disk.path);
  t.equal(m.source.size, disk.size);
  t.equal(m.format, 'qcow2');
  t.ok(['zstd', 'zlib', 'none'].includes(m.compression), `compression ${m.compression}`);
  t.equal(m.virtualSize, disk.size);
  t.equal(m.bytesWritten, (await stat(out)).size, 'bytesWritten = output size');
  t.equal(m.sha512, sha512, 'sha512 = sha512 of the file');
  t.equal(m.md5, await hashFile(out, 'md5'), 'md5 = md5 of the file');
  const [sha512sum, md5sum] = [await run('sha512sum', [out]), await run('md5sum', [out])];
  t.equal(m.sha512, sha512sum.split(' ')[0], 'sha512 = sha512sum');
  t.equal(m.md5, md5sum.split(' ')[0], 'md5 = md5sum');
  t.equal(m.partitionTable?.type, TABLE_TYPE[String(disk.table)], 'partition table type');
  t.ok(m.usedBytes > 0 && m.usedBytes < disk.size, `usedBytes ${mib(m.usedBytes)} of ${mib(disk.size)}`);
  const actual = await readPartitionTable(disk.path);
  for (const e of disk.partitions) {
    const p = m.partitions.find((x) => x.index === e.index);
    if (e.container) {
      if (p) t.notOk(p.fs !== null && KNOWN_FS.has(p.fs), 'the extended container holds no filesystem');
      continue;
    }
    if (!p) {
      t.fail(`partition ${e.index} (${e.role}) missing from the manifest`);
      continue;
    }
    const a = actual.partitions.find((x) => x.index === e.index)!;
    t.same([p.start, p.size], [a.start, a.size], `partition ${e.index}: start and size in bytes`);
    if (e.fs) t.equal(p.fs, e.fs, `partition ${e.index} (${e.role}) is ${e.fs}`);
    else t.notOk(p.fs !== null && KNOWN_FS.has(p.fs), `partition ${e.index} (${e.role}): no filesystem claimed`);
    t.ok(p.usedBytes >= 0 && p.usedBytes <= p.size, `partition ${e.index}: usedBytes within the partition`);
    if (e.copiedFully) t.equal(p.usedBytes, p.size, `partition ${e.index} (${e.role}) copied fully`);
    else if (e.fs && e.fs !== 'swap') t.ok(p.usedBytes < p.size / 2, `partition ${e.index}: only used blocks (${mib(p.usedBytes)} of ${mib(p.size)})`);
    t.type(p.method, 'string');
  }
  const known = new Set(actual.partitions.map((p) => p.index));
  t.same(m.partitions.map((p) => p.index).filter((i) => !known.has(i)), [], 'no partitions the table does not have');
}

// ---------------------------------------------------------------------------------------------
// Error cases

async function expectCleanFailure(t: Tap, name: string, source: string): Promise<void> {
  await t.test(name, async (t) => {
    const outDir = await makeTempDir('bmsnap-e2e-out-');
    t.teardown(() => removeTempDir(outDir));
    const r = await bmsnap(['image', source, '-o', join(outDir, 'out.qcow2'), '--json', '--manifest', join(outDir, 'manifest.json')]);
    t.not(r.exitCode, 0, 'non-zero exit');
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
    t.equal(lines.length, 1, 'exactly one line on stderr', { stderr: r.stderr });
    t.match(lines[0] ?? '', /^bmsnap: \S/, 'it starts with "bmsnap: "');
    t.notOk(lines.some((l) => /^\s+at /.test(l)), 'no stack trace');
    t.notMatch(r.stderr, /internal error/, 'reported as bad input, not as a bug');
    t.same(await readdir(outDir), [], 'no output, manifest or temp file left behind');
    t.comment(lines[0] ?? '');
  });
}

/**
 * A recognised filesystem whose metadata fails a check: its allocation map is not trusted, the
 * whole partition is copied (zero blocks aside), and the manifest and a warning say so. The
 * image, converted back, equals the source block for block.
 */
async function expectWholePartitionFallback(t: Tap, name: string, source: string, index: number): Promise<void> {
  await t.test(name, async (t) => {
    const outDir = await makeTempDir('bmsnap-e2e-out-');
    t.teardown(() => removeTempDir(outDir));
    const before = await sha256File(source);
    const out = join(outDir, 'out.qcow2');
    const r = await bmsnap(['image', source, '-o', out, '--json']);
    t.equal(r.exitCode, 0, 'exits 0', { stderr: r.stderr });
    if (r.exitCode !== 0) return;
    t.notOk(/^\s+at /m.test(r.stderr), 'no stack trace');
    t.ok(r.stderr.split('\n').some(isWarningOrWorse), 'a warning says what happened');
    const m = JSON.parse(r.stdout) as Manifest;
    const p = m.partitions.find((x) => x.index === index);
    t.match(p?.method, /^whole partition \(metadata failed checks: /, `partition ${index}: method names the fallback`);
    t.equal(p?.usedBytes, p?.size, `partition ${index}: copied whole`);
    const back = join(outDir, 'back.raw');
    await convertToRaw(out, back);
    const region = { name: `partition ${index}`, offset: p!.start, length: p!.size };
    t.same(await compareRegions(source, back, [region]), [], `converted back: partition ${index} is byte for byte the source's`);
    t.equal(await sha256File(source), before, 'the source is unchanged');
  });
}

async function sparseCopy(src: string, dst: string): Promise<string> {
  await run('cp', ['--sparse=always', src, dst]);
  return dst;
}

async function errorTests(t: Tap, work: string, disks: Map<LayoutName, TestDisk>): Promise<void> {
  const dir = join(work, 'bad-input');
  await run('mkdir', ['-p', dir]);
  const gpt = disks.get('gpt') ?? await buildDisk('gpt', work);
  const mbr = disks.get('mbr') ?? await buildDisk('mbr', work);
  const rawExt4 = disks.get('raw-ext4') ?? await buildDisk('raw-ext4', work);

  await expectCleanFailure(t, 'missing source', join(dir, 'does-not-exist.raw'));
  await expectCleanFailure(t, 'a directory as source', dir);

  const badGpt = await sparseCopy(gpt.path, join(dir, 'bad-gpt.raw'));
  // disk GUID bytes in both headers: both header CRCs fail
  await writeAt(badGpt, 512 + 56, Buffer.from('corrupt!'));
  await writeAt(badGpt, gpt.size - 512 + 56, Buffer.from('corrupt!'));
  await expectCleanFailure(t, 'corrupt GPT (primary and backup header CRCs)', badGpt);
  await run('rm', [badGpt]);

  const badSb = await sparseCopy(rawExt4.path, join(dir, 'bad-sb.raw'));
  await writeAt(badSb, 1024 + 24, u32le(0x7fffffff)); // s_log_block_size
  await expectWholePartitionFallback(t, 'corrupt ext4 superblock (s_log_block_size) on a whole-disk ext4', badSb, 0);
  await run('rm', [badSb]);

  const badRoot = await sparseCopy(gpt.path, join(dir, 'bad-root-sb.raw'));
  const root = (await readPartitionTable(gpt.path)).partitions.find((p) => p.index === 3)!;
  await writeAt(badRoot, root.start + 1024 + 24, u32le(0x7fffffff));
  await expectWholePartitionFallback(t, 'corrupt ext4 superblock in a GPT partition', badRoot, 3);
  await run('rm', [badRoot]);

  const shortMbr = await sparseCopy(mbr.path, join(dir, 'short-mbr.raw'));
  const p6 = (await readPartitionTable(mbr.path)).partitions.find((p) => p.index === 6)!;
  await run('truncate', ['-s', String(p6.start + p6.size / 2), shortMbr]);
  await expectCleanFailure(t, 'truncated MBR disk: a logical partition extends past the end', shortMbr);
  await run('rm', [shortMbr]);

  const shortGpt = await sparseCopy(gpt.path, join(dir, 'short-gpt.raw'));
  const p5 = (await readPartitionTable(gpt.path)).partitions.find((p) => p.index === 5)!;
  await run('truncate', ['-s', String(p5.start + 1024 * 1024), shortGpt]);
  await expectCleanFailure(t, 'truncated GPT disk: the last partition and the backup table cut off', shortGpt);
  await run('rm', [shortGpt]);
}

function u32le(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}
