// Deploying a chain onto a disk (issue 12; docs/incremental.md "Deploying a chain"): the GPT test
// disk (BIOS boot, ESP, ext4, xfs, swap) imaged in full with its index, 1 % of its ext4 files
// rewritten, a delta taken; `bmsnap deploy DELTA PARENT --index` writes the chain onto a larger
// loop device full of stale bytes. The result must hold every filesystem's tree exactly as the
// changed source, pass fsck, keep the BIOS boot partition byte for byte, carry a GPT that sgdisk
// verifies clean with its backup at the new end, and be written from the used clusters only.
// A mounted target, a target too small and a damaged parent are refused in one line.
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { attachLoop, buildDisk, findPartition, makeTempDir, removeTempDir, run, runUnchecked, withMount, withPartitionMount } from '../lib/disks.js';
import { digestAll, fsckAll, hashFile, sha256File } from '../lib/verify.js';
import { bmsnap } from '../lib/cli.js';

if (process.getuid?.() !== 0) { t.plan(0, 'needs root (loop devices, mounts)'); process.exit(0); }

const work = await makeTempDir('bmsnap-deploy-');
const source = await buildDisk('gpt', work);
t.teardown(async () => { await source.cleanup(); await removeTempDir(work); });
const at = (f: string) => join(work, f);

/** One line on stderr and exit CODE. */
function refused(t: Test, r: { exitCode: number; stderr: string }, want: RegExp, what: string, code = 1): void {
  t.equal(r.exitCode, code, `${what}: exit ${code}`);
  t.match(r.stderr.trim(), want, `${what}: says why`);
  t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`, { stderr: r.stderr });
}

await t.test('full + index, 1 % of the ext4 files rewritten, delta', async (t) => {
  const full = await bmsnap(['image', source.path, '-o', at('full.qcow2'), '--index', at('full.idx'), '-q']);
  t.equal(full.exitCode, 0, 'full image with its index', { stderr: full.stderr });
  await withPartitionMount(source.path, 3, 'rw', async (dir) => {
    const files = (await run('find', [dir, '-type', 'f', '-size', '+8k'])).split('\n').filter(Boolean);
    t.ok(files.length >= 3, `${files.length} files on the ext4 root`);
    for (const f of files.slice(0, Math.max(1, Math.ceil(files.length / 100)))) await writeFile(f, randomBytes(64 * 1024));
    await writeFile(join(dir, 'new-after-full'), randomBytes(100_000));
  });
  const before = await sha256File(source.path);
  const d = await bmsnap(['image', source.path, '-o', at('delta.qcow2'), '--parent-index', at('full.idx'), '--index', at('delta.idx'), '--json', '-q']);
  t.equal(d.exitCode, 0, 'delta against the full image', { stderr: d.stderr });
  t.equal(await sha256File(source.path), before, 'the source is unchanged by imaging');
  t.ok(JSON.parse(d.stdout).delta.changedClusters > 0, 'the delta holds changed clusters');
});

const TARGET_BYTES = 1024 * 2 ** 20;

/** A sparse file larger than the source, its first 800 MiB full of stale bytes, on a loop device. */
async function staleTarget(name: string, bytes = TARGET_BYTES): Promise<{ file: string; dev: string; detach(): Promise<void> }> {
  const file = at(name);
  await run('bash', ['-c', `yes BMSNAP-STALE-TARGET | head -c ${Math.min(bytes, 800 * 2 ** 20)} > ${file} && truncate -s ${bytes} ${file}`]);
  const loop = await attachLoop(file);
  return { file, dev: loop.dev, detach: () => loop.detach() };
}

await t.test('bmsnap deploy DELTA PARENT --index onto a larger, stale disk', async (t) => {
  const target = await staleTarget('target.raw');
  let stats: any;
  try {
    const r = await bmsnap(['deploy', at('delta.qcow2'), at('full.qcow2'), '--index', at('delta.idx'), '--to', target.dev, '--json', '-q']);
    t.equal(r.exitCode, 0, 'deploy exits 0', { stderr: r.stderr });
    stats = JSON.parse(r.stdout);
  } finally { await target.detach(); }
  t.equal(stats.targetSize, TARGET_BYTES, 'the target is the whole loop device');
  t.ok(stats.clustersFrom[0] > 0 && stats.clustersFrom[1] > 0, `clusters from both images: ${stats.clustersFrom.join(' + ')}`);
  t.ok(stats.bytesWritten < 0.8 * source.size, `used clusters only: ${stats.bytesWritten} bytes written for a ${source.size}-byte disk`);
  t.equal(stats.gptRelocated, true, 'the backup GPT was moved to the end of the larger disk');

  const verify = await runUnchecked('sgdisk', ['-v', target.file]);
  t.match(verify.stdout, /No problems found/, 'sgdisk -v: no problems', { out: verify.stdout });
  const dump = async (p: string) => (await run('sfdisk', ['-d', p])).split('\n').filter((l) => /^\S+ : start=/.test(l)).map((l) => l.replace(/^\S+/, ''));
  t.same(await dump(target.file), await dump(source.path), 'the same partitions (start, size, type, uuid, name)');

  const want = await digestAll(source.path);
  const got = await digestAll(target.file);
  t.same([...got.keys()], [...want.keys()], `filesystem trees on partitions ${[...want.keys()].join(', ')}`);
  for (const [i, d] of want) t.same(got.get(i)?.entries, d.entries, `partition ${i} (${d.fs}): the file tree of the changed source, file by file`);
  for (const f of await fsckAll(target.file)) t.ok(f.ok, `fsck of partition ${f.index} (${f.fs}) clean`, { output: f.output });
  const bios = await findPartition(source.path, 1);
  const slice = async (p: string) => (await readFile(p)).subarray(bios.start, bios.start + bios.size);
  t.ok((await slice(target.file)).equals(await slice(source.path)), 'the BIOS boot partition, byte for byte');
  t.equal(await hashFile(at('target.raw'), 'sha256') !== await sha256File(source.path), true, 'stale bytes outside the used clusters were left alone (not a raw copy)');
});

await t.test('refusals: one line, the target untouched where it could be', async (t) => {
  const target = await staleTarget('busy.raw');
  try {
    await run('bash', ['-c', `mkfs.ext4 -q ${target.dev}`]);
    const h = await sha256File(target.file);
    await withMount(target.dev, 'ro', async () => {
      const r = await bmsnap(['deploy', at('full.qcow2'), '--index', at('full.idx'), '--to', target.dev, '-q']);
      refused(t, r, /^bmsnap: \/dev\/loop\d+ is in use \(mounted, or held by another device\): refusing to write it$/, 'a mounted target');
    });
    t.equal(await sha256File(target.file), h, 'the mounted target was not written');
  } finally { await target.detach(); }

  const small = await staleTarget('small.raw', 256 * 2 ** 20);
  try {
    const h = await sha256File(small.file);
    const r = await bmsnap(['deploy', at('full.qcow2'), '--index', at('full.idx'), '--to', small.dev, '-q']);
    refused(t, r, /^bmsnap: \/dev\/loop\d+ holds 268435456 bytes, the image is a \d+-byte disk: the target disk is too small$/, 'a target too small');
    t.equal(await sha256File(small.file), h, 'the small target was not written');
  } finally { await small.detach(); }

  const full = await readFile(at('full.qcow2'));
  const damaged = Buffer.from(full);
  const off = full.length - 300 * 1024;
  damaged[off] = damaged[off]! ^ 0x10;
  await writeFile(at('damaged.qcow2'), damaged);
  const again = await staleTarget('again.raw');
  try {
    const r = await bmsnap(['deploy', at('delta.qcow2'), at('damaged.qcow2'), '--index', at('delta.idx'), '--to', again.dev, '-q']);
    refused(t, r, /^bmsnap: cluster \d+ (from file \S+damaged\.qcow2 differs from the index|of file \S+damaged\.qcow2 does not decompress)/, 'a damaged parent');
  } finally { await again.detach(); }
  const swapped = await bmsnap(['deploy', at('full.qcow2'), at('delta.qcow2'), '--index', at('delta.idx'), '--to', at('again.raw'), '-q']);
  refused(t, swapped, /differs from the index|does not match the index/, 'parent and delta swapped');
  const missing = await bmsnap(['deploy', at('delta.qcow2'), '--index', at('delta.idx'), '--to', at('again.raw'), '-q']);
  refused(t, missing, /no image of the chain holds it: a parent is missing/, 'the delta without its parent');
  refused(t, await bmsnap(['deploy', at('full.qcow2'), '--index', at('full.idx'), '-q']), /^bmsnap: missing --to DEVICE$/, 'no --to (a usage error)', 2);
});
