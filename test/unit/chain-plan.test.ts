// Which image of a chain supplies each cluster (agent/src/chain/chain-plan.ts): the nearest
// image with an entry wins, its zero flag included; images that disagree on size or codec are
// not one chain.
import t from 'tap';
import { planChain } from '../../agent/src/chain/chain-plan.js';
import type { ImageClusters } from '../../agent/src/chain/image-clusters.js';
import { ChainError } from '../../agent/src/incremental/errors.js';

/** An image from [guest, offset] pairs (offset -1: a zero cluster). */
function image(what: string, entries: [number, number][], over: Partial<ImageClusters> = {}): ImageClusters {
  return {
    what, virtualSize: 1 << 30, compressionType: 1, plain: false, count: entries.length,
    guest: Float64Array.from(entries.map((e) => e[0])),
    offset: Float64Array.from(entries.map((e) => e[1])),
    size: Uint32Array.from(entries.map((e) => (e[1] < 0 ? 0 : 100))),
    ...over,
  };
}

t.test('the nearest entry wins; a zero entry hides the parent; unlisted clusters read as zeros', async (t) => {
  const delta = image('delta', [[2, 1000], [5, -1], [9, 1100]]);
  const mid = image('mid', [[1, 500], [5, 600], [9, 700]]);
  const base = image('base', [[0, 100], [1, 200], [2, 300], [5, 400], [7, 450]]);
  const p = planChain([delta, mid, base]);
  const rows = Array.from(p.guest, (g, i) => [g, p.image[i], p.entry[i]]);
  t.same(rows, [[0, 2, 0], [1, 1, 0], [2, 0, 0], [7, 2, 4], [9, 0, 2]], 'cluster 5 is zeroed by the delta; 1 comes from the middle image; 9 from the delta');
});

t.test('a single image is its own plan', async (t) => {
  const p = planChain([image('only', [[3, 100], [4, -1], [8, 200]])]);
  t.same(Array.from(p.guest), [3, 8]);
});

t.test('images of different sizes or codecs are refused', async (t) => {
  t.throws(() => planChain([image('a', []), image('b', [], { virtualSize: 1 << 29 })]), ChainError);
  t.throws(() => planChain([image('a', []), image('b', [], { compressionType: 0 })]), /compressed differently/);
  t.throws(() => planChain([]), ChainError);
});
