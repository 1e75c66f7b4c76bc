// The `snapshot` service step: image the node's root disk straight into Glance.
// Declared with every argument in argsinfo (the conductor rejects undeclared args).
import type { Logger } from 'pino';
import { z, type SnapshotArgs } from './argcheck.js';
import { CommandFailure, type CommandContext } from '../command-runner.js';
import { resolveGlance } from '../../glance/auth.js';
import { GlanceClient, type GlanceImage } from '../../glance/client.js';
import { publishToGlance, type PublishOptions } from '../../glance/publish.js';
import type { Manifest } from '../../image-disk.js';
import { PROP } from '../../incremental/glance-index.js';
import { openSource } from '../../source/open-source.js';
import { describeError } from '../../errors.js';
import { stepProgress } from './step-progress.js';
import { chooseRootDevice, type RootDeviceHints } from '../root-device.js';
import { buildDiskMap } from '../../map/build-map.js';
import { checkedRelative, parseOperations, type ScrubOperation } from '../../scrub/operations.js';
import { withScrubbedOverlay, type ScrubResult } from '../../scrub/overlay.js';

export const SNAPSHOT_STEP = {
  step: 'snapshot',
  interface: 'deploy',
  priority: 0,
  reboot_requested: false,
  abortable: true,
  argsinfo: {
    image_name: { description: 'Name of the Glance image to create (default: snapshot-<node name or uuid>-<UTC time>)', required: false },
    visibility: { description: 'private (default), shared, community or public', required: false },
    disk_format: { description: 'qcow2 (default) or raw', required: false },
    compression: { description: 'qcow2 compression: zstd (default, qemu >= 5.1) or zlib (any qemu) or none', required: false },
    properties: { description: 'Extra image properties, a JSON object of strings', required: false },
    root_device_hints: { description: 'Which disk to capture, as Ironic root device hints (default: the node\'s root_device property, else the smallest disk >= 4 GiB)', required: false },
    glance_url: { description: 'Glance endpoint for the agent-only step (the snapshot plugin supplies its own)', required: false },
    glance_token: { description: 'Token for glance_url (agent-only step; note step args are visible in the node\'s fields)', required: false },
    scrub: { description: 'Remove per-machine state from the IMAGE (the disk is untouched): true for the defaults (ssh-hostkeys, machine-id, cloud-init, logs, shell-history, dhcp-leases, tmp) or a comma list of operations (default, ..., ssh-userdir)', required: false },
    scrub_paths: { description: 'With scrub: extra paths to remove from each Linux root filesystem of the image (a list)', required: false },
    parent: { description: 'Glance image id of an earlier bmsnap snapshot of this disk (with its cluster index): upload only the clusters that changed since, as a delta on it (docs/incremental.md)', required: false },
    or_full: { description: 'With parent: if the parent has no usable index, take a full image instead of failing (default false)', required: false },
    with_index: { description: 'Store the cluster index beside a qcow2 image (a hidden image), for later deltas (default true)', required: false },
  },
} as const;

/** Credentials the conductor plugin passes in the command parameters, outside the step. */
export interface PluginCredentials {
  glance_url: string;
  token: string;
  image_id?: string;
  /** The hidden image the conductor created for the cluster index (absent: no index). */
  index_image_id?: string;
  /** The parent the conductor checked (absent with or_full when the parent had no index). */
  parent_image_id?: string;
}

export interface SnapshotDeps { log?: Logger }

export async function runSnapshot(params: Record<string, unknown>, ctx: CommandContext, deps: SnapshotDeps): Promise<unknown> {
  const step = (params.step ?? {}) as { args?: Record<string, unknown> };
  const args = step.args ?? {};
  const node = (params.node ?? {}) as { uuid?: string; name?: string; properties?: { root_device?: RootDeviceHints } };
  const a = z.parse(args);
  const creds = (params.bmsnap ?? undefined) as PluginCredentials | undefined;
  const endpoint = creds?.glance_url ?? a.glance_url;
  const token = creds?.token ?? a.glance_token;
  if (!endpoint) throw new CommandFailure('no Glance endpoint: the snapshot step needs glance_url (or the bmsnap conductor plugin)', 'InvalidArguments');

  const device = await chooseRootDevice(a.root_device_hints ?? node.properties?.root_device).catch((err: unknown) => {
    throw new CommandFailure(describeError(err), 'DeviceNotFound');
  });
  const name = a.image_name ?? `snapshot-${node.name ?? node.uuid ?? 'node'}-${new Date().toISOString().replace(/[:.]/g, '').slice(0, 15)}Z`;
  let scrubOps: ScrubOperation[] | undefined;
  try {
    scrubOps = a.scrub ? parseOperations(a.scrub === true ? undefined : a.scrub) : undefined;
    for (const p of a.scrub_paths ?? []) checkedRelative(p);
  } catch (err) {
    throw new CommandFailure(`invalid snapshot step argument: ${describeError(err)}`, 'InvalidArguments');
  }
  if (!scrubOps && a.scrub_paths?.length) throw new CommandFailure('invalid snapshot step argument: scrub_paths needs scrub', 'InvalidArguments');
  const client = new GlanceClient(await resolveGlance({ endpoint, ...(token ? { token } : {}), env: {} }));
  const started = Date.now();
  const progress = stepProgress(ctx);

  const publish = async (path: string, scrubbed?: ScrubResult) => {
    const source = await openSource(path);
    try {
      const { image, manifest } = await publishToGlance(source, client, {
        name,
        visibility: a.visibility ?? 'private',
        properties: {
          ...(node.uuid ? { bmsnap_node_uuid: node.uuid } : {}),
          ...(scrubOps ? { bmsnap_scrubbed: scrubOps.map((o) => o.name).join(',') } : {}),
          ...a.properties,
        },
        captureMethod: creds ? 'ironic-service-step' : 'ironic-service-step-agent-only',
        format: a.disk_format ?? 'qcow2',
        codec: a.compression ?? 'zstd',
        progress,
        signal: ctx.signal,
        ...(creds?.image_id ? { imageId: creds.image_id } : {}),
        ...incrementalOptions(a, creds),
        ...(deps.log ? { log: deps.log } : {}),
      });
      return {
        image_id: image.id,
        image_name: name,
        device,
        size: manifest.bytesWritten,
        virtual_size: manifest.virtualSize,
        checksum: manifest.md5,
        os_hash_algo: 'sha512',
        os_hash_value: manifest.sha512,
        seconds: Math.round((Date.now() - started) / 100) / 10,
        ...(scrubbed ? { scrubbed: scrubSummary(scrubbed) } : {}),
        ...incrementalResult(image, manifest),
      };
    } finally {
      await source.close();
    }
  };

  try {
    if (!scrubOps) return await publish(device);
    const disk = await openSource(device);
    const map = await buildDiskMap(disk, disk.sectorSize).finally(() => disk.close());
    return await withScrubbedOverlay(device, map, { operations: scrubOps, paths: a.scrub_paths ?? [], ...(deps.log ? { log: deps.log } : {}) },
      (overlay, result) => publish(overlay, result));
  } catch (err) {
    throw new CommandFailure('Snapshot failed', 'SnapshotError', describeError(err));
  } finally {
    await client.close();
  }
}

/**
 * The index and parent options of publishToGlance. With the plugin, the conductor created the
 * index image, checked the parent (passing it only if it has an index) and protects it itself;
 * the upload credential may not touch it.
 */
function incrementalOptions(a: SnapshotArgs, creds?: PluginCredentials): Pick<PublishOptions, 'index' | 'indexImageId' | 'parent'> {
  if (creds?.image_id) {
    const parent = creds.parent_image_id;
    return {
      index: creds.index_image_id !== undefined,
      ...(creds.index_image_id ? { indexImageId: creds.index_image_id } : {}),
      ...(parent ? { parent: { imageId: parent, orFull: a.or_full === true, protect: false } } : {}),
    };
  }
  return {
    ...(a.with_index !== undefined ? { index: a.with_index } : {}),
    ...(a.parent ? { parent: { imageId: a.parent, orFull: a.or_full === true } } : {}),
  };
}

/** What the step result says about the index and the delta (from the manifest and the image). */
function incrementalResult(image: GlanceImage, m: Manifest): Record<string, unknown> {
  return {
    ...(typeof image[PROP.index] === 'string' ? { index_image_id: image[PROP.index] } : {}),
    ...(m.clusterIndex ? { index_sha256: m.clusterIndex.sha256 } : {}),
    ...(typeof image[PROP.parent] === 'string' ? { parent_image_id: image[PROP.parent] } : {}),
    ...(m.delta ? { delta: { changed_clusters: m.delta.changedClusters, dropped_clusters: m.delta.droppedClusters, unchanged_clusters: m.delta.unchangedClusters } } : {}),
    ...(m.warnings.length ? { warnings: m.warnings } : {}),
  };
}

/** Per partition, how many paths each operation removed or emptied. */
function scrubSummary(r: ScrubResult): Record<string, Record<string, number>> {
  return Object.fromEntries(Object.entries(r.partitions).map(([p, ops]) =>
    [p, Object.fromEntries(Object.entries(ops).map(([k, v]) => [k, v.removed.length + v.emptied.length]))]));
}
