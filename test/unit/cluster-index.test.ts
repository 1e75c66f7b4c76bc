// The per-cluster digest index (agent/src/incremental/cluster-index.ts) and the delta plan made
// from two of them (delta-plan.ts): round trip, every kind of damage refused in one line, and
// which clusters a delta carries.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { ClusterIndexBuilder, parseIndex, serializeIndex, clusterCount, type ClusterIndex } from '../../agent/src/incremental/cluster-index.js';
import { deltaUsed, planDelta } from '../../agent/src/incremental/delta-plan.js';
import { ClusterIndexError, ParentMismatchError } from '../../agent/src/incremental/errors.js';

const CS = 4096; // small clusters keep the test fast; the format takes any power of two >= 512
const SIZE = 64 * CS;

/** An index of CLUSTERS (cluster number -> content) in order. */
async function indexOf(clusters: Map<number, Buffer>, size = SIZE, cs = CS): Promise<ClusterIndex> {
  const b = await ClusterIndexBuilder.create(cs, size, 2);
  for (const c of [...clusters.keys()].sort((x, y) => x - y)) b.add(c, 1, clusters.get(c)!);
  return b.finish();
}
const content = (n: number) => new Map(Array.from({ length: n }, (_, i) => [i * 2 + (i > 10 ? 5 : 0), randomBytes(CS)] as [number, Buffer]));

t.test('round trip, runs kept maximal, equal content equal digests', async (t) => {
  const b = await ClusterIndexBuilder.create(CS, SIZE);
  const data = randomBytes(6 * CS);
  b.add(0, 3, data);            // 0-2
  b.add(3, 1, data.subarray(3 * CS)); // touches: one run 0-3
  b.add(10, 2, data.subarray(4 * CS));
  const idx = b.finish();
  t.same(idx.runs, [{ first: 0, count: 4 }, { first: 10, count: 2 }], 'touching additions make one run');
  t.equal(clusterCount(idx), 6);
  const back = parseIndex(serializeIndex(idx));
  t.same(back.runs, idx.runs);
  t.ok(back.digests.equals(idx.digests), 'digests survive');
  t.equal(back.virtualSize, SIZE);
  const again = await ClusterIndexBuilder.create(CS, SIZE);
  again.add(0, 1, data);
  t.ok(again.finish().digests.equals(idx.digests.subarray(0, 16)), 'same bytes, same digest');
  t.throws(() => b.add(5, 1, data), /out of order/, 'clusters go in increasing order only');
});

t.test('a damaged index is refused in one line, never half-read', async (t) => {
  const good = serializeIndex(await indexOf(content(20)));
  const refuse = (bytes: Buffer, why: RegExp, what: string) => {
    try { parseIndex(bytes, 'the parent index'); t.fail(`${what}: accepted`); } catch (e) {
      t.type(e, ClusterIndexError, `${what}: ClusterIndexError`);
      t.match((e as Error).message, why, what);
      t.notMatch((e as Error).message, /\n/, `${what}: one line`);
    }
  };
  refuse(good.subarray(0, good.length - 1), /SHA-256 mismatch|length/, 'truncated by a byte');
  refuse(good.subarray(0, 10), /too short/, 'a stub');
  refuse(Buffer.concat([Buffer.from('NOTANIDX'), good.subarray(8)]), /bad magic/, 'another file');
  let flips = 0;
  for (let seed = 0; seed < 200; seed++) {
    const bad = Buffer.from(good);
    const at = createHash('sha256').update(String(seed)).digest().readUInt32LE(0) % bad.length;
    bad[at] = bad[at]! ^ (1 << (seed % 8));
    try { parseIndex(bad); } catch (e) { if (e instanceof ClusterIndexError) flips++; }
  }
  t.equal(flips, 200, 'every one of 200 single-bit flips is caught');
  // structurally wrong but correctly summed: the checks behind the checksum
  const resum = (b: Buffer) => { const body = b.subarray(0, b.length - 32); return Buffer.concat([body, createHash('sha256').update(body).digest()]); };
  const v2 = Buffer.from(good); v2.writeUInt32LE(2, 8);
  refuse(resum(v2), /version 2/, 'a newer version');
  const overlap = Buffer.from(good); overlap.writeBigUInt64LE(0n, 40 + 16); // run 1 starts inside run 0
  refuse(resum(overlap), /out of order/, 'overlapping runs');
  const past = Buffer.from(good); past.writeBigUInt64LE(1n, 16); // a 1-byte disk
  refuse(resum(past), /past the disk's end/, 'runs past the end');
});

t.test('delta plan: changed, new, dropped and unchanged clusters', async (t) => {
  const parent = new Map([0, 1, 2, 3, 7, 8, 9].map((c) => [c, randomBytes(CS)] as [number, Buffer]));
  const now = new Map(parent);
  now.set(3, randomBytes(CS));        // changed
  now.delete(7);                      // freed
  now.set(11, randomBytes(CS));       // new
  now.set(12, randomBytes(CS));       // new, touching 11
  const plan = planDelta(await indexOf(parent), await indexOf(now));
  t.same(plan.changed, [{ first: 3, count: 1 }, { first: 11, count: 2 }]);
  t.same(plan.dropped, [{ first: 7, count: 1 }]);
  t.same([plan.changedClusters, plan.droppedClusters, plan.unchangedClusters], [3, 1, 5]);
  t.same(planDelta(await indexOf(now), await indexOf(now)).changed, [], 'against itself: nothing');
  const used = [{ offset: 3 * CS + 100, length: 200 }, { offset: 5 * CS, length: 8 * CS }];
  t.same(deltaUsed(used, plan, CS), [{ offset: 3 * CS + 100, length: 200 }, { offset: 11 * CS, length: 2 * CS }], 'what the delta reads: used bytes in changed clusters');
});

t.test('a parent of another shape is refused', async (t) => {
  const a = await indexOf(content(3));
  t.throws(() => planDelta(a, { ...a, virtualSize: SIZE * 2 }), ParentMismatchError);
  t.throws(() => planDelta(a, { ...a, clusterSize: CS * 2 }), /clusters are 4096 bytes, this image's 8192/);
});
