import t from 'tap';
import { normalize, complement, bitmapToExtents, clip } from '../../agent/src/map/extents.js';

t.test('normalize merges overlapping and touching extents', async (t) => {
  t.same(normalize([{ offset: 10, length: 5 }, { offset: 0, length: 10 }, { offset: 30, length: 0 }, { offset: 12, length: 10 }]),
    [{ offset: 0, length: 22 }]);
});
t.test('complement and clip', async (t) => {
  t.same(complement([{ offset: 4, length: 4 }], 16), [{ offset: 0, length: 4 }, { offset: 8, length: 8 }]);
  t.same(clip([{ offset: 0, length: 10 }, { offset: 20, length: 10 }], 5, 20), [{ offset: 5, length: 5 }, { offset: 20, length: 5 }]);
});
t.test('bitmapToExtents reads LSB-first bitmaps', async (t) => {
  const bm = Uint8Array.from([0b00000110, 0xff, 0x00, 0x80]);
  t.same(bitmapToExtents(bm, 32, 4096, 100), [
    { offset: 100 + 1 * 4096, length: 2 * 4096 },
    { offset: 100 + 8 * 4096, length: 8 * 4096 },
    { offset: 100 + 31 * 4096, length: 4096 },
  ]);
});
