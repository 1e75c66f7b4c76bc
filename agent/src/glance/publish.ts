// Disk -> Glance image, verified. Creates the image, streams the snapshot into it, then
// compares Glance's size, md5 checksum and sha512 os_hash_value with bmsnap's own. Any failure
// deletes the image it created (unless keepFailed); transient Glance failures are retried with
// a fresh image each time (Glance has no resumable upload).
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { AbortedError, UsageError } from '../errors.js';
import { imageDisk, type ImageFormat, type Manifest } from '../image-disk.js';
import { buildDiskMap, type DiskMap } from '../map/build-map.js';
import type { CodecName } from '../encoder/compress/codecs.js';
import type { Progress } from '../encoder/progress.js';
import type { Source } from '../source/open-source.js';
import { VERSION } from '../version.js';
import type { GlanceClient, GlanceImage } from './client.js';
import { GlanceError, VerificationError } from './errors.js';
import { GlanceSink } from './glance-sink.js';
import { sha256Hex } from '../incremental/cluster-index.js';
import { PROP, createIndexImage, loadParentIndex, uploadIndex } from '../incremental/glance-index.js';

export interface PublishOptions {
  name: string;
  visibility?: 'private' | 'shared' | 'community' | 'public';
  /** Extra image properties (string values, as Glance requires). */
  properties?: Record<string, string>;
  /** How the disk was captured, recorded as bmsnap_capture_method ("offline", "ironic-service-step", ...). */
  captureMethod?: string;
  format: ImageFormat;
  codec: CodecName;
  level?: number;
  workers?: number;
  frameCacheBytes?: number;
  retries?: number;
  keepFailed?: boolean;
  /**
   * Upload into this existing (queued) image instead of creating one: whoever created it (the
   * conductor plugin) owns it, verifies it and deletes it on failure; no retries here.
   */
  imageId?: string;
  /** The used-block map, if the caller built it (live capture adds its volumes to it). */
  map?: DiskMap;
  /**
   * qcow2: store the image's cluster index beside it (a hidden companion image, docs/incremental.md);
   * with parentImageId, upload a delta against that image (which must carry an index).
   */
  incremental?: { parentImageId?: string };
  progress?: Progress;
  signal?: AbortSignal;
  log?: Logger;
}

export interface PublishResult {
  image: GlanceImage;
  manifest: Manifest;
  attempts: number;
}

const GiB = 2 ** 30;

export async function publishToGlance(source: Source, client: GlanceClient, opts: PublishOptions): Promise<PublishResult> {
  const map = opts.map ?? await buildDiskMap(source, source.sectorSize);
  if (!opts.map) for (const w of map.warnings) opts.log?.warn(w);
  const retries = opts.imageId ? 0 : opts.retries ?? 2;
  if (opts.incremental && (opts.imageId || opts.format !== 'qcow2')) throw new UsageError('a cluster index and deltas need a qcow2 image that bmsnap creates');
  const parentId = opts.incremental?.parentImageId;
  const parent = parentId ? await loadParentIndex(client, parentId, opts.signal) : undefined;
  // Failed images whose DELETE failed too (Glance unreachable): tried again before each retry and
  // at the end; the final error names any still left, so the user can remove them.
  const leftBehind = new Set<string>();
  for (let attempt = 1; ; attempt++) {
    try {
      if (leftBehind.size) await deleteLeftBehind(client, leftBehind, opts);
      const { image, manifest } = await attemptOnce(source, client, map, opts, leftBehind, parent);
      return { image, manifest, attempts: attempt };
    } catch (err) {
      const retry = err instanceof GlanceError && err.retryable && attempt <= retries && !opts.signal?.aborted;
      if (!retry) {
        if (leftBehind.size) await deleteLeftBehind(client, leftBehind, opts);
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

async function deleteLeftBehind(client: GlanceClient, ids: Set<string>, opts: PublishOptions): Promise<void> {
  for (const id of ids) {
    await client.deleteImage(id).then(() => {
      ids.delete(id);
      opts.log?.info({ image: id }, 'deleted the image a failed attempt left behind');
    }, () => {});
  }
}

type Parent = Awaited<ReturnType<typeof loadParentIndex>>;

async function attemptOnce(source: Source, client: GlanceClient, map: DiskMap, opts: PublishOptions, leftBehind: Set<string>, parent?: Parent): Promise<{ image: GlanceImage; manifest: Manifest }> {
  const owned = !opts.imageId;
  const visibility = opts.visibility ?? 'private';
  // the index image first, so that the image can name it from its creation on
  const indexImage = opts.incremental ? await createIndexImage(client, opts.name, visibility, opts.signal) : undefined;
  const discard = async (id: string) => {
    if (opts.keepFailed) { opts.log?.warn({ image: id }, 'keeping the failed image (--keep-failed)'); return; }
    await client.deleteImage(id).catch((e: Error) => {
      opts.log?.error({ image: id, error: e.message }, 'could not delete the failed image');
      leftBehind.add(id);
    });
  };
  const image = opts.imageId ? await client.getImage(opts.imageId) : await client.createImage({
    name: opts.name,
    disk_format: opts.format,
    container_format: 'bare',
    visibility,
    min_disk: Math.ceil(map.size / GiB),
    ...provenance(source, map, opts),
    ...(indexImage ? { [PROP.index]: indexImage.id } : {}),
    ...(parent ? { [PROP.parent]: parent.image.id, [PROP.parentIndexSha256]: parent.sha256 } : {}),
    ...opts.properties,
  }, opts.signal).catch(async (err: unknown) => {
    if (indexImage) await discard(indexImage.id);
    throw err;
  });
  if (owned) opts.log?.info({ image: image.id, name: opts.name }, 'glance image created');
  else if (image.status !== 'queued') throw new GlanceError(`image ${image.id} is ${image.status}, not queued: it cannot take the upload`);
  // An image created for us (the conductor plugin, in-band hand-over) gets the same provenance
  // and extra properties as one we create.
  if (!owned) await client.setProperties(image, { ...provenance(source, map, opts), ...opts.properties }, opts.signal);
  try {
    const sink = new GlanceSink(client, image.id);
    let indexBytes: Buffer | undefined;
    const manifest = await imageDisk(source, sink, {
      format: opts.format, codec: opts.codec, map,
      ...(opts.incremental ? { index: { onIndex: (b: Buffer) => { indexBytes = b; }, ...(parent ? { parent } : {}) } } : {}),
      ...(opts.level !== undefined ? { level: opts.level } : {}),
      ...(opts.workers !== undefined ? { workers: opts.workers } : {}),
      ...(opts.frameCacheBytes !== undefined ? { frameCacheBytes: opts.frameCacheBytes } : {}),
      ...(opts.progress ? { progress: opts.progress } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.log ? { log: opts.log } : {}),
    });
    const stored = await client.getImage(image.id);
    verify(stored, manifest);
    if (!indexImage) return { image: stored, manifest };
    await uploadIndex(client, indexImage, indexBytes!, image.id, opts.signal);
    const indexed = await client.setProperties(stored, { [PROP.indexSha256]: sha256Hex(indexBytes!) }, opts.signal);
    opts.log?.info({ image: image.id, index: indexImage.id, delta: manifest.delta }, 'cluster index stored');
    return { image: indexed, manifest };
  } catch (err) {
    // An image created for us (imageId) is not ours to delete.
    if (owned) await discard(image.id);
    if (indexImage) await discard(indexImage.id);
    throw err;
  }
}

function verify(img: GlanceImage, m: Manifest): void {
  const problems: string[] = [];
  if (img.status !== 'active') problems.push(`status is ${img.status}, not active`);
  if (img.size !== m.bytesWritten) problems.push(`size ${img.size} != ${m.bytesWritten} sent`);
  if (img.checksum && img.checksum !== m.md5) problems.push('md5 checksum differs');
  if (img.os_hash_algo === 'sha512' && img.os_hash_value !== m.sha512) problems.push('sha512 differs');
  if (!img.checksum && img.os_hash_algo !== 'sha512') problems.push('Glance reported no digest to compare');
  if (problems.length) throw new VerificationError(`image ${img.id} does not match what was sent: ${problems.join('; ')}`);
}

function provenance(source: Source, map: DiskMap, opts: PublishOptions): Record<string, string> {
  return {
    bmsnap_version: VERSION,
    bmsnap_capture_method: opts.captureMethod ?? 'offline',
    bmsnap_captured_at: new Date().toISOString(),
    bmsnap_source: source.path,
    bmsnap_source_size: String(source.size),
    bmsnap_partition_table: map.table.type,
    bmsnap_filesystems: map.partitions.map((p) => `${p.index}:${p.fs ?? 'unknown'}`).join(','),
    bmsnap_compression: opts.format === 'qcow2' ? opts.codec : 'none',
  };
}
