// Disk -> Glance image, verified (publish-image.ts does the Glance side: create, stream,
// compare digests, delete on failure, retry with a fresh image).
import type { Logger } from 'pino';
import { UsageError } from '../errors.js';
import { imageDisk, type ImageFormat, type Manifest } from '../image-disk.js';
import { buildDiskMap, type DiskMap } from '../map/build-map.js';
import type { CodecName } from '../encoder/compress/codecs.js';
import type { Progress } from '../encoder/progress.js';
import type { Source } from '../source/open-source.js';
import { VERSION } from '../version.js';
import type { GlanceClient, GlanceImage } from './client.js';
import { PROP, loadParentIndex } from '../incremental/glance-index.js';
import { ClusterIndexError } from '../incremental/errors.js';
import { publishImage } from './publish-image.js';
import { protectParent } from '../incremental/parent-guard.js';

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
  /** With imageId: the queued, hidden image its creator made for the cluster index. */
  indexImageId?: string;
  /** The used-block map, if the caller built it (live capture adds its volumes to it). */
  map?: DiskMap;
  /**
   * Store the image's cluster index beside it (a hidden companion image, docs/incremental.md).
   * Default: for every qcow2 image bmsnap creates, and with indexImageId.
   */
  index?: boolean;
  /**
   * Upload a delta against Glance image IMAGEID (which must carry an index); orFull: if it has no
   * usable index, a full image (with its index) instead of a refusal. protect (default true):
   * protect the parent from deletion afterwards (false: the image's creator does that).
   */
  parent?: { imageId: string; orFull?: boolean; protect?: boolean };
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
  const withIndex = indexWanted(opts);
  const map = opts.map ?? await buildDiskMap(source, source.sectorSize);
  if (!opts.map) for (const w of map.warnings) opts.log?.warn(w);
  const parentId = opts.parent?.imageId;
  let fellBack: string | undefined;
  const parent = parentId ? await loadParentIndex(client, parentId, opts.signal).catch((err: unknown) => {
    // a parent without a usable index: a full image instead, only when the user asked for that
    if (!(err instanceof ClusterIndexError) || !opts.parent?.orFull) throw err;
    fellBack = `${err.message}; a full image was taken instead (--or-full)`;
    opts.log?.warn(fellBack);
    return undefined;
  }) : undefined;
  const result = await publishImage(client, {
    name: opts.name,
    diskFormat: opts.format,
    minDisk: Math.ceil(map.size / GiB),
    withIndex,
    properties: {
      ...provenance(source, map, opts),
      ...(parent ? { [PROP.parent]: parent.image.id, [PROP.parentIndexSha256]: parent.sha256 } : {}),
      ...opts.properties,
    },
    ...(opts.visibility ? { visibility: opts.visibility } : {}),
    ...(opts.imageId ? { imageId: opts.imageId } : {}),
    ...(opts.indexImageId ? { indexImageId: opts.indexImageId } : {}),
    ...(opts.retries !== undefined ? { retries: opts.retries } : {}),
    ...(opts.keepFailed ? { keepFailed: true } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.log ? { log: opts.log } : {}),
  }, async (sink) => {
    let indexBytes: Buffer | undefined;
    const manifest = await imageDisk(source, sink, {
      format: opts.format, codec: opts.codec, map,
      ...(withIndex ? { index: { onIndex: (b: Buffer) => { indexBytes = b; }, ...(parent ? { parent } : {}) } } : {}),
      ...(opts.level !== undefined ? { level: opts.level } : {}),
      ...(opts.workers !== undefined ? { workers: opts.workers } : {}),
      ...(opts.frameCacheBytes !== undefined ? { frameCacheBytes: opts.frameCacheBytes } : {}),
      ...(opts.progress ? { progress: opts.progress } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.log ? { log: opts.log } : {}),
    });
    return { manifest, ...(indexBytes ? { indexBytes } : {}) };
  });
  if (fellBack) result.manifest.warnings.push(fellBack);
  if (parent && opts.parent?.protect !== false) {
    // a delta needs its parent: keep the parent from deletion (or say clearly that we could not)
    const warning = await protectParent(client, parent.image.id, result.image.id, opts.log, opts.signal);
    if (warning) result.manifest.warnings.push(warning);
  }
  return result;
}

/** Whether to store a cluster index: by default for every qcow2 image bmsnap creates or is given an index image for. */
function indexWanted(opts: PublishOptions): boolean {
  const canIndex = opts.format === 'qcow2' && (!opts.imageId || opts.indexImageId !== undefined);
  const want = opts.index ?? (canIndex || opts.parent !== undefined);
  if (!want) return false;
  if (opts.format !== 'qcow2') throw new UsageError('a cluster index and deltas need the qcow2 format');
  if (!canIndex) throw new UsageError('a cluster index and deltas into an image created beforehand need its index image too');
  return true;
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
