// Which image of a chain (the delta first, its base last) supplies each guest cluster: the
// nearest image with an entry for it wins - its data, or its zero flag - and the images beneath
// are not consulted for that cluster. An entry in no image reads as zeros.
import type { ImageClusters } from './image-clusters.js';
import { ChainError } from '../incremental/errors.js';

/** The clusters with data, in guest order: which image (0 = top) and which of its entries. */
export interface ChainPlan {
  count: number;
  guest: Float64Array;
  image: Uint8Array;
  entry: Uint32Array;
}

export function planChain(images: readonly ImageClusters[]): ChainPlan {
  if (images.length === 0 || images.length > 255) throw new ChainError(`a chain of ${images.length} images`);
  const top = images[0]!;
  for (const im of images.slice(1)) {
    if (im.virtualSize !== top.virtualSize) throw new ChainError(`${im.what} is a ${im.virtualSize}-byte disk, ${top.what} ${top.virtualSize} bytes: they are not one chain`);
    if (im.compressionType !== top.compressionType || im.plain !== top.plain) throw new ChainError(`${im.what} and ${top.what} are compressed differently; flatten needs one codec through the chain`);
  }
  const upper = images.reduce((n, im) => n + im.count, 0);
  const guest = new Float64Array(upper);
  const image = new Uint8Array(upper);
  const entry = new Uint32Array(upper);
  const at = images.map(() => 0);
  let n = 0;
  for (;;) {
    let g = Infinity;
    for (let k = 0; k < images.length; k++) if (at[k]! < images[k]!.count) g = Math.min(g, images[k]!.guest[at[k]!]!);
    if (g === Infinity) break;
    let won = false;
    for (let k = 0; k < images.length; k++) {
      const im = images[k]!;
      if (at[k]! < im.count && im.guest[at[k]!] === g) {
        if (!won && im.offset[at[k]!]! >= 0) { guest[n] = g; image[n] = k; entry[n] = at[k]!; n++; }
        won = true;
        at[k]!++;
      }
    }
  }
  return { count: n, guest: guest.subarray(0, n), image: image.subarray(0, n), entry: entry.subarray(0, n) };
}
