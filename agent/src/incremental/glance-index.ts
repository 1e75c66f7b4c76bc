// A cluster index in Glance: a hidden companion image (os_hidden, raw/bare) beside the image it
// describes, found from that image's properties. Its bytes are checked three ways: Glance's own
// digests of the upload, the SHA-256 the described image records, and the index's trailer.
import { createHash } from 'node:crypto';
import type { GlanceClient, GlanceImage } from '../glance/client.js';
import { VerificationError } from '../glance/errors.js';
import { parseIndex, sha256Hex, type ClusterIndex } from './cluster-index.js';
import { ClusterIndexError } from './errors.js';

/** Image properties of incremental snapshots. */
export const PROP = {
  /** On an image: the id of its index image. */
  index: 'bmsnap_index_image',
  /** On an image: the SHA-256 of its index. */
  indexSha256: 'bmsnap_index_sha256',
  /** On a delta: the image it goes on, and that image's index digest. */
  parent: 'bmsnap_parent_image',
  parentIndexSha256: 'bmsnap_parent_index_sha256',
  /** On an index image: the image it describes. */
  indexOf: 'bmsnap_index_of',
} as const;

/** 2 TiB fully used is 32 Mi clusters, 512 MiB of digests. */
const MAX_INDEX_BYTES = 1 << 30;

/**
 * The index of image PARENTID (a parent, or for ROLE 'image' one being flattened), checked;
 * ClusterIndexError saying what is wrong and what to do.
 */
export async function loadParentIndex(client: GlanceClient, parentId: string, signal?: AbortSignal, role = 'parent image'): Promise<{ image: GlanceImage; index: ClusterIndex; sha256: string; bytes: Buffer }> {
  const image = await client.getImage(parentId);
  const indexId = image[PROP.index];
  const want = image[PROP.indexSha256];
  if (typeof indexId !== 'string' || typeof want !== 'string') {
    throw new ClusterIndexError(`${role} ${parentId} has no bmsnap cluster index (${PROP.index} / ${PROP.indexSha256} unset): it was taken without one (--no-index, raw, or an older bmsnap): take a full snapshot first`);
  }
  if (image.status !== 'active') throw new ClusterIndexError(`${role} ${parentId} is ${image.status}, not active`);
  const bytes = await client.download(indexId, MAX_INDEX_BYTES, signal).catch((err: { status?: number }) => {
    if (err.status === 404) throw new ClusterIndexError(`the cluster index of ${role} ${parentId} (image ${indexId}) is gone from Glance`);
    throw err;
  });
  const got = sha256Hex(bytes);
  if (got !== want) throw new ClusterIndexError(`the cluster index of ${role} ${parentId} (image ${indexId}) has SHA-256 ${got.slice(0, 12)}…, the image records ${want.slice(0, 12)}…: it was changed or damaged`);
  return { image, index: parseIndex(bytes, `the cluster index of ${role} ${parentId}`), sha256: got, bytes };
}

/** A queued, hidden image to hold the index of image NAME. */
export function createIndexImage(client: GlanceClient, name: string, visibility: string, signal?: AbortSignal): Promise<GlanceImage> {
  return client.createImage({
    name: `${name}.bmsnap-index`, disk_format: 'raw', container_format: 'bare', visibility, os_hidden: true,
  }, signal);
}

/** Uploads BYTES into INDEXIMAGE and checks what Glance stored; records which image it describes. */
export async function uploadIndex(client: GlanceClient, indexImage: GlanceImage, bytes: Buffer, describes: string, signal?: AbortSignal): Promise<void> {
  await client.upload(indexImage.id, (async function* () { yield bytes; })(), signal);
  const stored = await client.getImage(indexImage.id);
  const sha512 = createHash('sha512').update(bytes).digest('hex');
  if (stored.status !== 'active' || stored.size !== bytes.length || (stored.os_hash_algo === 'sha512' && stored.os_hash_value !== sha512)) {
    throw new VerificationError(`index image ${indexImage.id} does not match what was sent (status ${stored.status}, size ${stored.size} of ${bytes.length})`);
  }
  await client.setProperties(stored, { [PROP.indexOf]: describes }, signal);
}
