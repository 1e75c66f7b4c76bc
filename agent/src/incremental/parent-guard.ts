// A delta is unreadable without its parent, so a parent with deltas is kept from deletion with
// Glance's own `protected` flag: `openstack image delete PARENT` is refused by Glance itself, and
// the property bmsnap_protected says why. `bmsnap delete` knows the chains: it refuses a parent
// that still has deltas, and lifts the protection once a parent's last delta is gone. Glance can
// list a parent's deltas by property (bmsnap_parent_image=ID), so no list is kept on the parent.
import type { Logger } from 'pino';
import type { GlanceClient, GlanceImage } from '../glance/client.js';
import { GlanceError } from '../glance/errors.js';
import { UsageError } from '../errors.js';
import { ChainError } from './errors.js';
import { PROP } from './glance-index.js';

/** Set on a parent that bmsnap protected (and so may unprotect); an owner's own protection stays. */
export const PROTECTED_PROP = 'bmsnap_protected';
const PROTECTED_WHY = 'parent of bmsnap deltas: delete them first (bmsnap delete), or flatten them (bmsnap flatten)';

/** Protects PARENT for its new delta; a warning (returned, and logged) when it cannot. */
export async function protectParent(client: GlanceClient, parentId: string, deltaId: string, log?: Logger, signal?: AbortSignal): Promise<string | undefined> {
  try {
    const parent = await client.getImage(parentId);
    if (parent.protected === true) return undefined;
    await client.setProperties(parent, { protected: true, [PROTECTED_PROP]: PROTECTED_WHY }, signal);
    log?.info({ image: parentId, delta: deltaId }, 'parent image protected from deletion while it has deltas');
    return undefined;
  } catch (err) {
    const why = err instanceof GlanceError && err.status === 403 ? 'it belongs to another project' : (err as Error).message;
    const warning = `the parent image ${parentId} could not be protected from deletion (${why}): if it is deleted, delta ${deltaId} cannot be read; bmsnap flatten ${deltaId} makes a standalone copy`;
    log?.warn({ image: parentId, delta: deltaId }, warning);
    return warning;
  }
}

/** The deltas taken against image ID. */
export async function deltasOf(client: GlanceClient, id: string): Promise<GlanceImage[]> {
  return (await client.findImages({ [PROP.parent]: id })).filter((i) => i.id !== id);
}

/**
 * Deletes IMAGE and its index image, refusing while deltas need it; then, if its parent has no
 * delta left, lifts the protection bmsnap put on the parent. Returns the ids deleted.
 */
export async function deleteSnapshot(client: GlanceClient, id: string, log?: Logger): Promise<string[]> {
  const image = await client.getImage(id).catch((err: GlanceError) => {
    if (err.status === 404) throw new UsageError(`image ${id} does not exist (or is not visible to you)`);
    throw err;
  });
  const children = await deltasOf(client, id);
  if (children.length) {
    const names = children.map((c) => c.id).join(', ');
    throw new ChainError(`image ${id} is the parent of ${children.length === 1 ? 'delta' : 'deltas'} ${names}: delete ${children.length === 1 ? 'it' : 'them'} first, or flatten ${children.length === 1 ? 'it' : 'them'} (bmsnap flatten DELTA --glance NAME)`);
  }
  if (image.protected === true) {
    if (typeof image[PROTECTED_PROP] !== 'string') throw new ChainError(`image ${id} is protected by its owner, not by bmsnap: unprotect it first (openstack image set --unprotected ${id})`);
    await client.setProperties(image, { protected: false, [PROTECTED_PROP]: null });
  }
  const deleted: string[] = [];
  await client.deleteImage(id);
  deleted.push(id);
  const indexId = image[PROP.index];
  if (typeof indexId === 'string') {
    await client.deleteImage(indexId);
    deleted.push(indexId);
  }
  const parentId = image[PROP.parent];
  if (typeof parentId === 'string') {
    const parent = await client.getImage(parentId).catch(() => undefined);
    if (parent && parent.protected === true && typeof parent[PROTECTED_PROP] === 'string' && !(await deltasOf(client, parentId)).length) {
      await client.setProperties(parent, { protected: false, [PROTECTED_PROP]: null });
      log?.info({ image: parentId }, 'its last delta is gone: the parent image is no longer protected');
    }
  }
  return deleted;
}
