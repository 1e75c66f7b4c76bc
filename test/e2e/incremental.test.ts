// Incremental snapshots (issue 12; docs/incremental.md): a full image with its cluster index, a
// 1 % change to the files of a real ext4 (loop-mounted), then a delta against the parent's index.
// The delta, read over its parent (qemu-img rebase -u on a copy), must equal a full image of the
// changed disk byte for byte and hold exactly its file tree; freed clusters come out as zeros; a
// damaged or foreign parent index is refused in one line with nothing left. Then the same through
// a REAL Glance (bookworm's glance-api, test/lib/glance.ts): the index as a hidden companion
// image, `--glance NAME --parent IMAGE`, and a parent without a usable index refused with no
// image left behind.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { attachLoop, makeTempDir, removeTempDir, run, withMount } from '../lib/disks.js';
import { convertToRaw, qemuImgCheck, sha256File, treeDigest } from '../lib/verify.js';
import { bmsnap } from '../lib/cli.js';
import { startGlance, type GlanceImageRecord, type LocalGlance } from '../lib/glance.js';
import { createReadStream } from 'node:fs';
import { readImageClusters } from '../../agent/src/chain/image-clusters.js';
import { SequentialReader } from '../../agent/src/chain/sequential-reader.js';

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

  const f = await bmsnap(['flatten', at('delta.qcow2'), at('full1.qcow2'), '--index', at('delta.idx'), '-o', at('flat.qcow2'), '--json', '-q']);
  t.equal(f.exitCode, 0, 'bmsnap flatten DELTA PARENT --index', { stderr: f.stderr });
  const mf = JSON.parse(f.stdout);
  t.ok((await qemuImgCheck(at('flat.qcow2'))).clean, 'qemu-img check: the flat image is clean');
  t.equal((await run('qemu-img', ['info', '--output=json', at('flat.qcow2')])).includes('backing'), false, 'it stands alone (no backing file)');
  await convertToRaw(at('flat.qcow2'), at('flat.raw'));
  t.equal(await sha256File(at('flat.raw')), await sha256File(at('full2.raw')), 'flat = the full image of the changed disk, byte for byte');
  const [fromDelta, fromParent] = mf.flatten.clustersFrom as number[];
  t.ok(fromDelta! > 0 && fromDelta! <= md.delta.changedClusters && fromDelta! + fromParent! === mf.flatten.clusters, `${fromDelta} clusters from the delta (${md.delta.changedClusters} changed), ${fromParent} from the parent`);
  t.equal(await copiedVerbatim(at('flat.qcow2'), [at('delta.qcow2'), at('full1.qcow2')]), mf.flatten.clusters, 'every frame is copied as it was, none recompressed');
  await rm(at('flat.raw'));
});

/** How many frames of FLAT are byte for byte the frame of the same cluster in the nearest image of CHAIN that has it. */
async function copiedVerbatim(flat: string, chain: string[]): Promise<number> {
  const tables = async (p: string) => readImageClusters(new SequentialReader(createReadStream(p), p));
  const out = await tables(flat);
  const ins = await Promise.all(chain.map(tables));
  const flatBytes = await readFile(flat);
  const inBytes = await Promise.all(chain.map((p) => readFile(p)));
  let same = 0;
  for (let k = 0; k < out.count; k++) {
    const g = out.guest[k]!;
    for (let c = 0; c < ins.length; c++) {
      const im = ins[c]!;
      const j = im.guest.indexOf(g);
      if (j < 0) continue;
      // (an image's last frame is known only up to the end of its sector: compare the common part)
      const n = Math.min(out.size[k]!, im.size[j]!);
      const mine = flatBytes.subarray(out.offset[k]!, out.offset[k]! + n);
      const theirs = inBytes[c]!.subarray(im.offset[j]!, im.offset[j]! + n);
      if (mine.equals(theirs)) same++;
      break;
    }
  }
  return same;
}

await t.test('flatten refuses a damaged, misordered or truncated chain: one line, nothing left', async (t) => {
  const full = await readFile(at('full1.qcow2'));
  const damaged = Buffer.from(full);
  damaged[full.length - 200 * 1024] = damaged[full.length - 200 * 1024]! ^ 0x40;
  await writeFile(at('damaged.qcow2'), damaged);
  await writeFile(at('short.qcow2'), full.subarray(0, 100_000));
  const cases: [string, string[], RegExp][] = [
    ['a damaged parent', [at('delta.qcow2'), at('damaged.qcow2')], /^bmsnap: cluster \d+ from file \S+damaged.qcow2 (differs from the index|does not decompress)/],
    ['parent and delta swapped', [at('full1.qcow2'), at('delta.qcow2')], /differs from the index|does not match the index/],
    ['a truncated parent', [at('delta.qcow2'), at('short.qcow2')], /short.qcow2 ends at byte 100000/],
    ['not a qcow2', [at('delta.qcow2'), at('delta.idx')], /is not a bmsnap qcow2 image/],
  ];
  for (const [what, chain, want] of cases) {
    const r = await bmsnap(['flatten', ...chain, '--index', at('delta.idx'), '-o', at('x.qcow2'), '-q']);
    t.equal(r.exitCode, 1, `${what}: exit 1`);
    t.match(r.stderr.trim(), want, `${what}: says why`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`, { stderr: r.stderr });
    t.notOk(existsSync(at('x.qcow2')), `${what}: no output`);
    t.same((await readdir(work)).filter((f) => /\.partial/.test(f)), [], `${what}: no temp files`);
  }
  await rm(at('damaged.qcow2'));
  await rm(at('short.qcow2'));
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

/** What an admin does to delete a protected image anyway. */
async function unprotect(g: LocalGlance, id: string): Promise<void> {
  const res = await fetch(`${g.url}/v2/images/${id}`, {
    method: 'PATCH', headers: { 'content-type': 'application/openstack-images-v2.1-json-patch' },
    body: JSON.stringify([{ op: 'replace', path: '/protected', value: false }]),
  });
  if (res.status !== 200) throw new Error(`unprotecting ${id}: ${res.status} ${await res.text()}`);
}

/** Every image, hidden ones too (Glance lists os_hidden images only when asked). */
async function allImages(g: LocalGlance): Promise<GlanceImageRecord[]> {
  const hidden = (await (await fetch(`${g.url}/v2/images?os_hidden=true&limit=100`)).json() as { images: GlanceImageRecord[] }).images;
  return [...await g.listImages(), ...hidden];
}

await t.test('through Glance: the index beside the image, and a delta against a Glance image', async (t) => {
  const glance = await startGlance();
  t.teardown(() => glance.dispose());
  const up = (name: string, ...more: string[]) => bmsnap(['image', disk, '--glance', name, '--glance-url', glance.url, '--json', '-q', ...more]);
  const base = await up('incr-base');
  t.equal(base.exitCode, 0, 'full upload (the index is stored by default)', { stderr: base.stderr });
  const mb = JSON.parse(base.stdout);
  const baseImg = await glance.getImage(mb.glance.imageId);
  const indexId = baseImg.bmsnap_index_image as string;
  t.match(indexId, /^[0-9a-f-]{36}$/, 'the image names its index image');
  const idx = await glance.getImage(indexId);
  t.equal(idx.os_hidden, true, 'the index image is hidden');
  t.equal(idx.bmsnap_index_of, baseImg.id, '... and names the image it describes');
  await glance.downloadImage(indexId, at('glance.idx'));
  t.equal(await sha256File(at('glance.idx')), baseImg.bmsnap_index_sha256, "the index's SHA-256 is the one the image records");
  t.equal(baseImg.bmsnap_index_sha256, mb.clusterIndex.sha256, '... and the manifest');

  await change(async (dir) => {
    for (let i = 0; i < FILES / 100; i++) await writeFile(join(dir, `f${i * 11 + 3}`), randomBytes(FILE_BYTES));
  });
  const d = await up('incr-delta', '--parent', baseImg.id);
  t.equal(d.exitCode, 0, 'delta upload --parent', { stderr: d.stderr });
  const md = JSON.parse(d.stdout);
  const deltaImg = await glance.getImage(md.glance.imageId);
  t.equal(deltaImg.status, 'active', 'the delta is active');
  t.equal(deltaImg.bmsnap_parent_image, baseImg.id, 'bmsnap_parent_image: the parent');
  t.equal(deltaImg.bmsnap_parent_index_sha256, baseImg.bmsnap_index_sha256, "bmsnap_parent_index_sha256: the parent's index");
  t.match(deltaImg.bmsnap_index_image, /^[0-9a-f-]{36}$/, 'the delta has an index of its own (for the next delta)');
  t.ok(deltaImg.size! <= 0.05 * baseImg.size!, `delta ${deltaImg.size} bytes <= 5 % of the full ${baseImg.size}`);
  const guarded = await glance.getImage(baseImg.id);
  t.equal(guarded.protected, true, 'the parent is protected from deletion while it has a delta');
  t.match(guarded.bmsnap_protected, /parent of bmsnap deltas/, '... and says why');
  t.equal(await glance.deleteImage(baseImg.id), 403, 'Glance itself refuses to delete the parent');
  const del = await bmsnap(['delete', baseImg.id, '--glance-url', glance.url]);
  t.equal(del.exitCode, 1, 'bmsnap delete PARENT: refused');
  t.match(del.stderr.trim(), new RegExp(`^bmsnap: image ${baseImg.id} is the parent of delta ${deltaImg.id}: delete it first, or flatten it`), 'naming the delta, in one line', { stderr: del.stderr });
  await glance.downloadImage(baseImg.id, at('g-base.qcow2'));
  await glance.downloadImage(deltaImg.id, at('g-delta.qcow2'));
  const chain = await chainToRaw(at('g-base.qcow2'), at('g-delta.qcow2'), 'gchain');
  const full = await bmsnap(['image', disk, '-o', at('g-full.qcow2'), '-q']);
  t.equal(full.exitCode, 0);
  await convertToRaw(at('g-full.qcow2'), at('g-full.raw'));
  t.equal(await sha256File(chain), await sha256File(at('g-full.raw')), 'Glance parent + Glance delta = the full image of the changed disk');

  const fl = await bmsnap(['flatten', deltaImg.id, '--glance', 'incr-flat', '--glance-url', glance.url, '--json', '-q']);
  t.equal(fl.exitCode, 0, 'bmsnap flatten DELTA --glance NAME', { stderr: fl.stderr });
  const flatImg = await glance.getImage(JSON.parse(fl.stdout).glance.imageId);
  t.equal(flatImg.status, 'active', 'the flat image is active');
  t.equal(flatImg.bmsnap_parent_image, undefined, 'it has no parent');
  t.equal(flatImg.bmsnap_flattened_from, deltaImg.id, 'bmsnap_flattened_from: the delta');
  t.equal(flatImg.bmsnap_index_sha256, deltaImg.bmsnap_index_sha256, "its index is the delta's (both describe the same disk)");
  t.equal((await glance.getImage(flatImg.bmsnap_index_image as string)).os_hidden, true, '... stored as a hidden image of its own');
  t.ok(flatImg.size! < baseImg.size! + deltaImg.size!, `flat ${flatImg.size} bytes < parent + delta`);
  await glance.downloadImage(flatImg.id, at('g-flat.qcow2'));
  t.ok((await qemuImgCheck(at('g-flat.qcow2'))).clean, 'qemu-img check: clean');
  await convertToRaw(at('g-flat.qcow2'), at('g-flat.raw'));
  t.equal(await sha256File(at('g-flat.raw')), await sha256File(at('g-full.raw')), 'the flat image = the full image of the changed disk');
  const onFlat = await up('incr-on-flat', '--parent', flatImg.id);
  t.equal(onFlat.exitCode, 0, 'a delta can be taken against the flat image', { stderr: onFlat.stderr });
  t.ok(JSON.parse(onFlat.stdout).delta.changedClusters === 0, '... and nothing changed since');
  for (const f of ['g-flat.raw', 'g-flat.qcow2']) await rm(at(f));

  const before = new Set((await allImages(glance)).map((i) => i.id));
  const plain = await up('incr-plain', '--no-index');
  t.equal(plain.exitCode, 0, 'an upload without an index (--no-index)');
  t.equal((await glance.getImage(JSON.parse(plain.stdout).glance.imageId as string)).bmsnap_index_image, undefined, '... names no index image');
  const noIndex = await up('incr-bad', '--parent', JSON.parse(plain.stdout).glance.imageId as string);
  t.equal(noIndex.exitCode, 1, 'a parent without an index: exit 1');
  t.match(noIndex.stderr.trim(), /^bmsnap: parent image \S+ has no bmsnap cluster index/, 'says so', { stderr: noIndex.stderr });
  t.equal(noIndex.stderr.trim().split('\n').length, 1, 'in one line');
  await glance.deleteImage(indexId);
  const gone = await up('incr-bad', '--parent', baseImg.id);
  t.equal(gone.exitCode, 1, "a parent whose index image was deleted: exit 1");
  t.match(gone.stderr.trim(), /^bmsnap: the cluster index of parent image \S+ \(image \S+\) is gone from Glance$/, 'says what is missing, in one line', { stderr: gone.stderr });
  const orFull = await up('incr-or-full', '--parent', baseImg.id, '--or-full');
  t.equal(orFull.exitCode, 0, '... with --or-full: a full image instead', { stderr: orFull.stderr });
  const mo = JSON.parse(orFull.stdout);
  t.equal(mo.delta, undefined, 'not a delta');
  t.match(mo.warnings.join('\n'), /is gone from Glance; a full image was taken instead \(--or-full\)/, 'the manifest says why');
  const fullImg = await glance.getImage(mo.glance.imageId);
  t.equal(fullImg.bmsnap_parent_image, undefined, 'no parent recorded');
  t.match(fullImg.bmsnap_index_sha256, /^[0-9a-f]{64}$/, 'with its own index, for the next delta');
  t.equal((await bmsnap(['delete', fullImg.id, '--glance-url', glance.url, '-q'])).exitCode, 0, 'bmsnap delete removes it again');
  const plainId = JSON.parse(plain.stdout).glance.imageId as string;
  const added = (await allImages(glance)).map((i) => i.id).filter((id) => !before.has(id));
  t.same(added, [plainId], 'no image left by the refused uploads: only the plain upload was added');

  // the delta's parent deleted behind bmsnap's back (an admin lifting the protection first)
  await unprotect(glance, baseImg.id);
  t.equal(await glance.deleteImage(baseImg.id), 204, 'an admin deletes the parent anyway');
  const orphan = await bmsnap(['flatten', deltaImg.id, '--glance', 'incr-flat2', '--glance-url', glance.url, '-q']);
  t.equal(orphan.exitCode, 1, 'flattening a delta whose parent is gone: exit 1');
  t.match(orphan.stderr.trim(), /^bmsnap: image \S+ is a delta on image \S+, which is gone from Glance/, 'says so in one line', { stderr: orphan.stderr });
  t.notOk((await allImages(glance)).some((i) => i.name?.startsWith('incr-flat2')), 'no flat image or index image left');

  // bmsnap delete: the flat image has a delta (incr-on-flat), so it is refused until that is gone
  const onFlatId = JSON.parse(onFlat.stdout).glance.imageId as string;
  const onFlatIndex = (await glance.getImage(onFlatId)).bmsnap_index_image as string;
  t.equal((await bmsnap(['delete', flatImg.id, '--glance-url', glance.url, '-q'])).exitCode, 1, 'the flat image has a delta: not deleted');
  const d1 = await bmsnap(['delete', onFlatId, '--glance-url', glance.url]);
  t.equal(d1.exitCode, 0, 'bmsnap delete DELTA', { stderr: d1.stderr });
  const left = new Set((await allImages(glance)).map((i) => i.id));
  t.notOk(left.has(onFlatId) || left.has(onFlatIndex), 'the delta and its index image are gone');
  const flatNow = await glance.getImage(flatImg.id);
  t.equal(flatNow.protected, false, "its parent's last delta is gone: the parent is unprotected");
  t.equal(flatNow.bmsnap_protected, undefined, '... and no longer says it is protected');
  t.equal((await bmsnap(['delete', flatImg.id, '--glance-url', glance.url, '-q'])).exitCode, 0, 'and can now be deleted');
});

await t.test('a failed upload leaves neither the image nor its index image', async (t) => {
  const capped = await startGlance({ sizeCap: 4 * 1024 * 1024 });
  t.teardown(() => capped.dispose());
  const r = await bmsnap(['image', disk, '--glance', 'incr-capped', '--glance-url', capped.url, '--with-index', '--retries', '0', '-q']);
  t.equal(r.exitCode, 1, 'over the size cap: exit 1');
  t.match(r.stderr.trim(), /^bmsnap: uploading image \S+: Glance answered 413/, 'says why', { stderr: r.stderr });
  t.same((await allImages(capped)).map((i) => `${i.name} ${i.status}`), [], 'no image, hidden or not, is left');
});
