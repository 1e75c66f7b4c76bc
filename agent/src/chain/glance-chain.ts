// A delta's chain in Glance: the image, its parent (bmsnap_parent_image), that one's parent, ...
// down to a full image. Each link is checked before any data moves: the parent is there, active,
// a qcow2, and its index is the very one the delta was made against.
import type { GlanceClient, GlanceImage } from '../glance/client.js';
import type { ClusterIndex } from '../incremental/cluster-index.js';
import { ChainError } from '../incremental/errors.js';
import { PROP, loadParentIndex } from '../incremental/glance-index.js';
import type { ChainMember } from './chain-walk.js';
import { SequentialReader } from './sequential-reader.js';

/** Deeper than this is a loop or a mistake (and flattening regularly keeps chains short). */
const MAX_DEPTH = 64;

export interface GlanceChain {
  /** Top first. */
  images: GlanceImage[];
  top: { index: ClusterIndex; sha256: string; bytes: Buffer };
}

export async function resolveGlanceChain(client: GlanceClient, imageId: string, signal?: AbortSignal): Promise<GlanceChain> {
  const top = await loadParentIndex(client, imageId, signal, 'image');
  const images = [top.image];
  const seen = new Set([top.image.id]);
  for (let child = top.image; typeof child[PROP.parent] === 'string';) {
    const parentId = child[PROP.parent] as string;
    if (seen.has(parentId) || images.length >= MAX_DEPTH) throw new ChainError(`the chain of image ${imageId} loops or is deeper than ${MAX_DEPTH} images (at ${parentId})`);
    const parent = await client.getImage(parentId).catch((err: { status?: number }) => {
      if (err.status === 404) throw new ChainError(`image ${child.id} is a delta on image ${parentId}, which is gone from Glance: the delta cannot be read without it`);
      throw err;
    });
    if (parent.status !== 'active') throw new ChainError(`image ${child.id} needs its parent image ${parentId}, which is ${parent.status}`);
    if (parent.disk_format !== 'qcow2') throw new ChainError(`the parent image ${parentId} is ${String(parent.disk_format)}, not a bmsnap qcow2`);
    if (parent[PROP.indexSha256] !== child[PROP.parentIndexSha256]) {
      throw new ChainError(`image ${child.id} was made against another version of image ${parentId} (its ${PROP.parentIndexSha256} does not match the parent's ${PROP.indexSha256})`);
    }
    images.push(parent);
    seen.add(parentId);
    child = parent;
  }
  return { images, top: { index: top.index, sha256: top.sha256, bytes: top.bytes } };
}

/** One download per image, all open at once: each is read front to back as the merge advances. */
export async function openGlanceChain(client: GlanceClient, chain: GlanceChain, signal?: AbortSignal): Promise<ChainMember[]> {
  const members: ChainMember[] = [];
  try {
    for (const im of chain.images) {
      members.push({
        reader: new SequentialReader(await client.downloadStream(im.id, signal), `image ${im.id}`),
        expect: { size: im.size ?? -1, ...(im.os_hash_algo === 'sha512' && im.os_hash_value ? { sha512: im.os_hash_value } : {}) },
      });
    }
  } catch (err) {
    await Promise.all(members.map((m) => m.reader.close()));
    throw err;
  }
  return members;
}
