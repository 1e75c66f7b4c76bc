// Incremental snapshots, the local slice (issue 12; docs/incremental.md): a full image with its
// cluster index, a 1 % change to the files of a real ext4 (loop-mounted), then a delta against the
// parent's index. The delta, read over its parent (qemu-img rebase -u on a copy), must equal a
// full image of the changed disk byte for byte and hold exactly its file tree; freed clusters come
// out as zeros; a damaged or foreign parent index is refused in one line with nothing left.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { attachLoop, makeTempDir, removeTempDir, run, withMount } from '../lib/disks.js';
import { convertToRaw, qemuImgCheck, sha256File, treeDigest } from '../lib/verify.js';
import { bmsnap } from '../lib/cli.js';

if (process.getuid?.() !== 0) { t.plan(0, 'needs root (loop mounts)'); process.exit(0); }

const work = await makeTempDir('bmsnap-incr-');
t.teardown(() => removeTempDir(work));
const disk = join(work, 'disk.raw');
const at = (f: string) => join(work, f);
const FILES = 600;
const FILE_BYTES = 64 * 1024;

/** Mounts the disk read-write for a change (the disk is the test's, not a source being imaged). */
async function change(fn: (dir: string) => Promise<void>): Promise<void> {
  const loop = await attachLoop(disk);
  try { await withMount(loop.dev, 'rw', fn); } finally { await loop.detach(); }
}

/** The delta read over a copy of PARENT, as raw. */
async function chainToRaw(parent: string, delta: string, name: string): Promise<string> {
  const base = at(`${name}.base.qcow2`);
  const top = at(`${name}.top.qcow2`);
  await copyFile(parent, base);
  await copyFile(delta, top);
  await run('qemu-img', ['rebase', '-u', '-b', base, '-F', 'qcow2', top]);
  const raw = at(`${name}.raw`);
  await convertToRaw(top, raw);
  return raw;
}

await t.test('full image + index, 1 % of files changed, delta', async (t) => {
  await mkdir(at('tree'));
  for (let i = 0; i < FILES; i++) await writeFile(join(at('tree'), `f${i}`), randomBytes(FILE_BYTES));
  await run('truncate', ['-s', '256M', disk]);
  await run('mkfs.ext4', ['-q', '-d', at('tree'), disk]);
  const full1 = await bmsnap(['image', disk, '-o', at('full1.qcow2'), '--index', at('full1.idx'), '--json', '-q']);
  t.equal(full1.exitCode, 0, 'full image with --index', { stderr: full1.stderr });
  const m1 = JSON.parse(full1.stdout);
  t.equal(m1.clusterIndex.sha256, await sha256File(at('full1.idx')), 'the manifest names the index file written');

  await change(async (dir) => {
    for (let i = 0; i < FILES / 100; i++) await writeFile(join(dir, `f${i * 7}`), randomBytes(FILE_BYTES));
  });
  const before = await sha256File(disk);
  const d = await bmsnap(['image', disk, '-o', at('delta.qcow2'), '--parent-index', at('full1.idx'), '--index', at('delta.idx'), '--json', '-q']);
  t.equal(d.exitCode, 0, 'delta with --parent-index', { stderr: d.stderr });
  t.equal(await sha256File(disk), before, 'the source is unchanged by imaging');
  const md = JSON.parse(d.stdout);
  t.ok((await qemuImgCheck(at('delta.qcow2'))).clean, 'qemu-img check: the delta is clean');
  t.ok(md.delta.changedClusters >= FILES / 100, `${md.delta.changedClusters} clusters changed, ${md.delta.unchangedClusters} left to the parent`);
  t.ok(md.bytesWritten <= 0.05 * m1.bytesWritten, `delta ${md.bytesWritten} bytes <= 5 % of the full ${m1.bytesWritten}`);
  t.equal(md.delta.parentIndexSha256, m1.clusterIndex.sha256, 'the delta names its parent by index digest');

  const full2 = await bmsnap(['image', disk, '-o', at('full2.qcow2'), '-q']);
  t.equal(full2.exitCode, 0, 'a full image of the changed disk, to compare with');
  const chain = await chainToRaw(at('full1.qcow2'), at('delta.qcow2'), 'chain1');
  await convertToRaw(at('full2.qcow2'), at('full2.raw'));
  t.equal(await sha256File(chain), await sha256File(at('full2.raw')), 'parent + delta = the full image of the changed disk, byte for byte');
  t.same((await treeDigest(chain, 0)).entries, (await treeDigest(disk, 0)).entries, 'parent + delta: the file tree of the changed disk, file by file');
});

await t.test('freed clusters: zeros in the delta, not the parent showing through', async (t) => {
  await change(async (dir) => { for (const f of await readdir(dir)) if (/^f1\d\d$/.test(f)) await unlink(join(dir, f)); });
  const d = await bmsnap(['image', disk, '-o', at('delta2.qcow2'), '--parent-index', at('delta.idx'), '--json', '-q']);
  t.equal(d.exitCode, 0, 'second delta, on the first', { stderr: d.stderr });
  t.ok(JSON.parse(d.stdout).delta.droppedClusters > 0, 'some clusters were freed');
  // the first delta's chain, flattened, is the second delta's parent
  const parent = at('chain1.qcow2');
  await run('qemu-img', ['convert', '-O', 'qcow2', at('chain1.raw'), parent]);
  const chain = await chainToRaw(parent, at('delta2.qcow2'), 'chain2');
  const full3 = await bmsnap(['image', disk, '-o', at('full3.qcow2'), '-q']);
  t.equal(full3.exitCode, 0);
  await convertToRaw(at('full3.qcow2'), at('full3.raw'));
  t.equal(await sha256File(chain), await sha256File(at('full3.raw')), 'two deltas deep: equal to the full image');
  for (const f of ['chain1.raw', 'chain2.raw', 'full2.raw', 'full3.raw']) await rm(at(f));
});

await t.test('a damaged or foreign parent index: one line, exit 1, nothing written', async (t) => {
  const idx = await readFile(at('full1.idx'));
  const flipped = Buffer.from(idx);
  flipped[100] = flipped[100]! ^ 0x10;
  await writeFile(at('flipped.idx'), flipped);
  await run('truncate', ['-s', '64M', at('other.raw')]);
  await run('mkfs.ext4', ['-q', at('other.raw')]);
  const cases: [string, string[], RegExp][] = [
    ['damaged', ['image', disk, '-o', at('x.qcow2'), '--parent-index', at('flipped.idx')], /^bmsnap: parent index \S+ is not usable: SHA-256 mismatch/],
    ['not an index', ['image', disk, '-o', at('x.qcow2'), '--parent-index', at('full1.qcow2')], /not a bmsnap cluster index/],
    ['another disk size', ['image', at('other.raw'), '-o', at('x.qcow2'), '--parent-index', at('full1.idx')], /a delta needs the same disk size/],
    ['raw format', ['image', disk, '-o', at('x.raw'), '-f', 'raw', '--parent-index', at('full1.idx')], /need --format qcow2/],
  ];
  for (const [what, args, want] of cases) {
    const r = await bmsnap([...args, '-q']);
    t.not(r.exitCode, 0, `${what}: non-zero exit`);
    t.match(r.stderr.trim(), want, `${what}: says why`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`, { stderr: r.stderr });
    t.notOk(existsSync(at('x.qcow2')) || existsSync(at('x.raw')), `${what}: no output left`);
    t.same((await readdir(work)).filter((f) => /\.partial|\.tmp/.test(f)), [], `${what}: no temp files`);
  }
});
