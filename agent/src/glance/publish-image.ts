// Bytes -> a verified Glance image. Creates the image (or takes a queued one created for us),
// streams what PRODUCE writes into it, then compares Glance's size, md5 checksum and sha512
// os_hash_value with the producer's own. With an index, a hidden companion image holds the
// cluster index (incremental/glance-index.ts). Any failure deletes what this created (unless
// keepFailed); transient Glance failures are retried with a fresh image each time (Glance has no
// resumable upload), so PRODUCE may be called more than once.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { AbortedError } from '../errors.js';
import type { Sink } from '../sink/sink.js';
import type { GlanceClient, GlanceImage } from './client.js';
import { GlanceError, VerificationError } from './errors.js';
import { GlanceSink } from './glance-sink.js';
import { sha256Hex } from '../incremental/cluster-index.js';
import { PROP, createIndexImage, uploadIndex } from '../incremental/glance-index.js';

export interface PublishImageOptions {
  name: string;
  diskFormat: 'qcow2' | 'raw';
  visibility?: 'private' | 'shared' | 'community' | 'public';
  minDisk?: number;
  /** Image properties (string values, as Glance requires). */
  properties: Record<string, string>;
  /** PRODUCE returns the image's cluster index: store it beside the image. */
  withIndex: boolean;
  /**
   * Upload into this existing (queued) image instead of creating one: whoever created it (the
   * conductor plugin) owns it, verifies it and deletes it on failure; no retries here.
   */
  imageId?: string;
  /**
   * With imageId and withIndex: the queued, hidden image created for the index beside it (the
   * creator owns it too). Without it, an index is stored in an image created here.
   */
  indexImageId?: string;
  retries?: number;
  keepFailed?: boolean;
  signal?: AbortSignal;
  log?: Logger;
}

/** What a producer reports: what it sent, and the index when one was asked for. */
export interface Produced<M extends SentDigests> {
  manifest: M;
  indexBytes?: Buffer;
}

export interface SentDigests {
  bytesWritten: number;
  md5: string;
  sha512: string;
}

export async function publishImage<M extends SentDigests>(client: GlanceClient, opts: PublishImageOptions, produce: (sink: Sink) => Promise<Produced<M>>): Promise<{ image: GlanceImage; manifest: M; attempts: number }> {
  const retries = opts.imageId ? 0 : opts.retries ?? 2;
  // Failed images whose DELETE failed too (Glance unreachable): tried again before each retry and
  // at the end; the final error names any still left, so the user can remove them.
  const leftBehind = new Set<string>();
  for (let attempt = 1; ; attempt++) {
    try {
      if (leftBehind.size) await deleteLeftBehind(client, leftBehind, opts.log);
      const { image, manifest } = await attemptOnce(client, opts, leftBehind, produce);
      return { image, manifest, attempts: attempt };
    } catch (err) {
      const retry = err instanceof GlanceError && err.retryable && attempt <= retries && !opts.signal?.aborted;
      if (!retry) {
        if (leftBehind.size) await deleteLeftBehind(client, leftBehind, opts.log);
        if (leftBehind.size && err instanceof Error) {
          const ids = [...leftBehind];
          err.message += `; image${ids.length > 1 ? 's' : ''} ${ids.join(', ')} may be left in Glance (deleting ${ids.length > 1 ? 'them' : 'it'} failed)`;
        }
        throw err;
      }
      const delay = 1000 * 2 ** (attempt - 1);
      opts.log?.warn({ attempt, delayMs: delay, error: err.message }, 'upload failed; retrying with a fresh image');
      await sleep(delay, undefined, opts.signal ? { signal: opts.signal } : {}).catch(() => { throw new AbortedError(); });
    }
  }
}

async function deleteLeftBehind(client: GlanceClient, ids: Set<string>, log?: Logger): Promise<void> {
  for (const id of ids) {
    await client.deleteImage(id).then(() => {
      ids.delete(id);
      log?.info({ image: id }, 'deleted the image a failed attempt left behind');
    }, () => {});
  }
}

async function attemptOnce<M extends SentDigests>(client: GlanceClient, opts: PublishImageOptions, leftBehind: Set<string>, produce: (sink: Sink) => Promise<Produced<M>>): Promise<{ image: GlanceImage; manifest: M }> {
  const owned = !opts.imageId;
  const visibility = opts.visibility ?? 'private';
  // the index image first, so that the image can name it from its creation on
  const indexImage = !opts.withIndex ? undefined
    : opts.indexImageId ? await queued(client, opts.indexImageId)
      : await createIndexImage(client, opts.name, visibility, opts.signal);
  const indexOwned = indexImage !== undefined && !opts.indexImageId;
  const discard = async (id: string) => {
    if (opts.keepFailed) { opts.log?.warn({ image: id }, 'keeping the failed image (--keep-failed)'); return; }
    await client.deleteImage(id).catch((e: Error) => {
      opts.log?.error({ image: id, error: e.message }, 'could not delete the failed image');
      leftBehind.add(id);
    });
  };
  const image = opts.imageId ? await queued(client, opts.imageId) : await client.createImage({
    name: opts.name,
    disk_format: opts.diskFormat,
    container_format: 'bare',
    visibility,
    ...(opts.minDisk !== undefined ? { min_disk: opts.minDisk } : {}),
    ...(indexImage ? { [PROP.index]: indexImage.id } : {}),
    ...opts.properties,
  }, opts.signal).catch(async (err: unknown) => {
    if (indexOwned) await discard(indexImage.id);
    throw err;
  });
  if (owned) opts.log?.info({ image: image.id, name: opts.name }, 'glance image created');
  // An image created for us (the conductor plugin, in-band hand-over) gets the same properties
  // as one we create.
  if (!owned) await client.setProperties(image, { ...opts.properties, ...(indexImage ? { [PROP.index]: indexImage.id } : {}) }, opts.signal);
  try {
    const { manifest, indexBytes } = await produce(new GlanceSink(client, image.id));
    const stored = await client.getImage(image.id);
    verify(stored, manifest);
    if (!indexImage) return { image: stored, manifest };
    if (!indexBytes) throw new Error('the producer made no cluster index');
    await uploadIndex(client, indexImage, indexBytes, image.id, opts.signal);
    const indexed = await client.setProperties(stored, { [PROP.indexSha256]: sha256Hex(indexBytes) }, opts.signal);
    opts.log?.info({ image: image.id, index: indexImage.id }, 'cluster index stored');
    return { image: indexed, manifest };
  } catch (err) {
    // An image created for us (imageId, indexImageId) is not ours to delete.
    if (owned) await discard(image.id);
    if (indexOwned) await discard(indexImage.id);
    throw err;
  }
}

/** An image created for us to upload into: it must still be queued. */
async function queued(client: GlanceClient, id: string): Promise<GlanceImage> {
  const image = await client.getImage(id);
  if (image.status !== 'queued') throw new GlanceError(`image ${id} is ${image.status}, not queued: it cannot take the upload`);
  return image;
}

function verify(img: GlanceImage, m: SentDigests): void {
  const problems: string[] = [];
  if (img.status !== 'active') problems.push(`status is ${img.status}, not active`);
  if (img.size !== m.bytesWritten) problems.push(`size ${img.size} != ${m.bytesWritten} sent`);
  if (img.checksum && img.checksum !== m.md5) problems.push('md5 checksum differs');
  if (img.os_hash_algo === 'sha512' && img.os_hash_value !== m.sha512) problems.push('sha512 differs');
  if (!img.checksum && img.os_hash_algo !== 'sha512') problems.push('Glance reported no digest to compare');
  if (problems.length) throw new VerificationError(`image ${img.id} does not match what was sent: ${problems.join('; ')}`);
}
