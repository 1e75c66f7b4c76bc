// serverImageCreate(): `openstack server image create` for bare metal, as a library call. Finds
// the Ironic node of a Nova server (or the node itself), starts the bmsnap `snapshot` service
// step on it with the caller's credentials and, with `wait`, follows it to the Glance image.
// The bmsnap CLI's `server-image-create` is a thin front over this.
import type { Logger } from 'pino';
import type { Progress } from '../encoder/progress.js';
import { UsageError } from '../errors.js';
import { openSession } from '../openstack/session.js';
import { choice, integer } from '../options.js';
import { SnapshotFailedError } from './errors.js';
import { followSnapshot } from './follow.js';
import { z } from '../ipa/steps/argcheck.js';
import { IronicNodes, type IronicNode, type ServiceStep, type SnapshotInfo } from './ironic-nodes.js';
import { NovaClient } from './nova.js';
import { resolveTarget } from './resolve-target.js';

export const VISIBILITIES = ['private', 'shared', 'community', 'public'] as const;
export const DISK_FORMATS = ['qcow2', 'raw'] as const;
export const COMPRESSIONS = ['zstd', 'zlib', 'none'] as const;

export interface ServerImageCreateOptions {
  /** Nova server id or name, Ironic node UUID or name, or a Nova instance UUID known to Ironic. */
  server: string;
  /** Name of the new Glance image. */
  name: string;
  /** Follow the snapshot to its end (default: return once Ironic has accepted it). */
  wait?: boolean;
  /** With wait: give up waiting after this many seconds (the snapshot goes on). 0 / unset: no limit. */
  timeoutSeconds?: number;
  /** With wait: seconds between two reads of the node (default 2). */
  pollSeconds?: number;
  visibility?: (typeof VISIBILITIES)[number];
  diskFormat?: (typeof DISK_FORMATS)[number];
  compression?: (typeof COMPRESSIONS)[number];
  /** Extra image properties. */
  properties?: Record<string, string>;
  /** Which disk to capture (Ironic root device hints); default the node's root_device property. */
  rootDeviceHints?: Record<string, string | number | boolean>;
  /** A delta: only the clusters changed since this earlier snapshot (a Glance image id with a cluster index; docs/incremental.md). */
  parent?: string;
  /** With parent: a full image if the parent has no usable index, instead of failing. */
  orFull?: boolean;
  /** Store the cluster index beside a qcow2 image, for later deltas (default true; false: none). */
  withIndex?: boolean;
  /** Credentials: OS_* / clouds.yaml like the openstack CLI, or explicit endpoints. */
  auth?: {
    /** clouds.yaml entry (else OS_CLOUD, else OS_* variables of `env`). */
    cloud?: string;
    /** Where OS_* come from (default process.env). */
    env?: NodeJS.ProcessEnv;
    /** A Keystone token to use as is (else OS_TOKEN), with explicit endpoints. */
    token?: string;
    /** Ironic endpoint (skips the catalog; with no token: a no-auth Ironic). */
    ironicUrl?: string;
    /** Nova endpoint, e.g. https://nova:8774/v2.1 (skips the catalog). */
    novaUrl?: string;
    cacert?: string;
    insecure?: boolean;
  };
  /** With wait: the capture's progress (the same interface imageDisk reports to). */
  progress?: Progress;
  /** With wait: called on every provision state change of the node. */
  onState?: (node: { uuid: string; name: string | null; provision_state: string }) => void;
  /** Stops waiting (the snapshot goes on on the node). */
  signal?: AbortSignal;
  log?: Logger;
}

export interface ServerImageCreateResult {
  node: { uuid: string; name: string | null };
  server?: { id: string; name: string };
  imageName: string;
  /** 'started': Ironic accepted the step (no wait); 'active': the image is active in Glance. */
  state: 'started' | 'active';
  /** With wait: the Glance image, and its size in bytes. */
  imageId?: string;
  size?: number;
  /** With wait, for a delta: its parent image and counts, as the node recorded them. */
  parentImageId?: string;
  delta?: SnapshotInfo['delta'];
  /** With wait: what the node warned about (e.g. orFull took a full image). */
  warnings?: string[];
  seconds: number;
}

export async function serverImageCreate(o: ServerImageCreateOptions): Promise<ServerImageCreateResult> {
  const started = Date.now();
  const step = snapshotStep(o);
  const a = o.auth ?? {};
  const session = await openSession({
    ...(a.cloud ? { cloud: a.cloud } : {}), ...(a.env ? { env: a.env } : {}), ...(a.token ? { token: a.token } : {}),
    ...(a.cacert ? { cacert: a.cacert } : {}), insecure: a.insecure === true,
    endpoints: { ...(a.ironicUrl ? { baremetal: a.ironicUrl } : {}), ...(a.novaUrl ? { compute: a.novaUrl } : {}) },
    primary: 'baremetal',
    required: ['baremetal'],
    missing: 'no Ironic to talk to: give OpenStack credentials (OS_AUTH_URL + OS_* variables, or --os-cloud), or --ironic-url (OS_AUTH_TYPE=none + OS_ENDPOINT for a no-auth Ironic; a token in OS_TOKEN or --token-file)',
  });
  const tls = { ...(session.ca ? { ca: session.ca } : {}), verifyTls: session.verifyTls !== false, ...(session.token ? { token: session.token } : {}) };
  const ironic = new IronicNodes(session.endpoint('baremetal')!, tls);
  const novaUrl = session.endpoint('compute');
  const nova = novaUrl ? new NovaClient(novaUrl, tls) : undefined;
  try {
    const { node, server } = await resolveTarget(o.server, ironic, nova);
    checkNode(node);
    const previousImageId = node.driver_internal_info?.bmsnap_snapshot?.image_id;
    await ironic.service(node.uuid, [step]);
    const result = {
      node: { uuid: node.uuid, name: node.name },
      ...(server ? { server: { id: server.id, name: server.name } } : {}),
      imageName: o.name,
    };
    o.log?.info({ node: node.uuid, server: server?.id, image: o.name }, 'snapshot started');
    if (!o.wait) return { ...result, state: 'started', seconds: secondsSince(started) };
    const info = await followSnapshot(ironic, node.uuid, {
      previousImageId,
      pollSeconds: o.pollSeconds ?? 2,
      timeoutSeconds: o.timeoutSeconds ?? 0,
      ...(o.progress ? { progress: o.progress } : {}),
      ...(o.onState ? { onState: o.onState } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
    });
    return {
      ...result, state: 'active', imageId: info.image_id, ...(info.size !== undefined ? { size: info.size } : {}),
      ...(info.parent_image_id ? { parentImageId: info.parent_image_id, ...(info.delta ? { delta: info.delta } : {}) } : {}),
      ...(info.warnings?.length ? { warnings: info.warnings } : {}),
      seconds: secondsSince(started),
    };
  } finally {
    await Promise.all([ironic.close(), nova?.close()]);
  }
}

/** The service step, checked here so that bad options fail before anything is contacted. */
function snapshotStep(o: ServerImageCreateOptions): ServiceStep {
  if (!o.server?.trim()) throw new UsageError('missing SERVER (a Nova server or Ironic node, by id or name)');
  if (!o.name?.trim()) throw new UsageError('missing NAME (the name of the new image)');
  if (o.name.length > 255) throw new UsageError('NAME must be at most 255 characters');
  if (o.timeoutSeconds !== undefined) integer(o.timeoutSeconds, 'timeout', [0, 7 * 86400]);
  const args: Record<string, unknown> = { image_name: o.name };
  if (o.visibility) args.visibility = choice(o.visibility, VISIBILITIES, 'visibility');
  if (o.diskFormat) args.disk_format = choice(o.diskFormat, DISK_FORMATS, 'disk format');
  if (o.compression) args.compression = choice(o.compression, COMPRESSIONS, 'compression');
  if (o.properties && Object.keys(o.properties).length) args.properties = o.properties;
  if (o.rootDeviceHints && Object.keys(o.rootDeviceHints).length) args.root_device_hints = o.rootDeviceHints;
  if (o.parent !== undefined) args.parent = o.parent;
  // the defaults are left to the step (with_index: true for qcow2 only)
  if (o.orFull !== undefined && o.orFull !== false) args.or_full = o.orFull;
  if (o.withIndex !== undefined && o.withIndex !== true) args.with_index = o.withIndex;
  try {
    // the agent's own check of the step's arguments (combinations: or_full without parent, ...)
    z.parse(args);
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  return { interface: 'deploy', step: 'snapshot', args };
}

/** Only a deployed node can be serviced, and only the bmsnap deploy interface records the image. */
function checkNode(n: IronicNode): void {
  const label = n.name ? `${n.name} (${n.uuid})` : n.uuid;
  if (n.provision_state !== 'active' || n.target_provision_state) {
    const state = n.provision_state === 'active' ? `busy ("active" -> "${n.target_provision_state}")` : `"${n.provision_state}"`;
    throw new SnapshotFailedError(`node ${label} is ${state}; only an active node can be snapshotted`, n.uuid, n.last_error);
  }
  if (n.deploy_interface !== 'bmsnap') {
    throw new SnapshotFailedError(`node ${label} uses deploy interface "${n.deploy_interface}"; the snapshot step needs "bmsnap" (see docs/runbook.md)`, n.uuid);
  }
}

const secondsSince = (t: number) => Math.round((Date.now() - t) / 100) / 10;
