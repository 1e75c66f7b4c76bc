// Follows a node through a snapshot (active -> servicing -> service wait -> ... -> active or
// service failed) by reading it every few seconds, passing on the progress the bmsnap deploy
// interface copies into driver_internal_info.bmsnap_snapshot.
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortedError } from '../errors.js';
import type { Progress } from '../encoder/progress.js';
import { SnapshotFailedError, WaitTimeoutError } from './errors.js';
import type { IronicNode, IronicNodes, SnapshotInfo } from './ironic-nodes.js';

export interface FollowOptions {
  /** bmsnap_snapshot.image_id before the step started (a new one means a new snapshot). */
  previousImageId?: string | undefined;
  pollSeconds: number;
  /** 0: no limit. */
  timeoutSeconds: number;
  progress?: Progress;
  /** Called when the node's provision state changes. */
  onState?: (node: IronicNode) => void;
  signal?: AbortSignal;
}

const SERVICING = new Set(['active', 'servicing', 'service wait', 'service hold', 'service failed']);
/** How long to wait for last_error after `service failed` (an abort in Ironic 29 sets none; the plugin fills it in within ~10 s). */
const LAST_ERROR_GRACE_MS = 20_000;

/** Resolves with the snapshot's record once the image is active; throws with last_error otherwise. */
export async function followSnapshot(ironic: IronicNodes, ident: string, o: FollowOptions): Promise<SnapshotInfo & { image_id: string }> {
  const started = Date.now();
  const label = (n: IronicNode) => (n.name ? `${n.name} (${n.uuid})` : n.uuid);
  const feed = progressFeeder(o.progress);
  let busySeen = false;
  let lastState = '';
  let failedAt = 0;
  for (;;) {
    if (o.signal?.aborted) throw new AbortedError(`stopped waiting; the snapshot goes on on node ${ident}`);
    const n = await ironic.getNode(ident);
    if (!n) throw new SnapshotFailedError(`node ${ident} disappeared while it was being snapshotted`, ident);
    const state = n.provision_state;
    if (state !== lastState) { lastState = state; o.onState?.(n); }
    const info = n.driver_internal_info?.bmsnap_snapshot;
    if (info?.progress) feed(info.progress);
    // (service failed keeps target_provision_state "active": only the lock tells the conductor is
    // done; where Ironic hides the lock from the caller, the states alone and last_error's grace)
    const settled = !n.reservation && (state === 'service failed' || !n.target_provision_state);
    if (!SERVICING.has(state)) {
      throw new SnapshotFailedError(`node ${label(n)} went to "${state}" instead of servicing: something else is driving it`, n.uuid, n.last_error);
    }
    if (state === 'service failed' && settled) {
      failedAt ||= Date.now();
      if (n.last_error || Date.now() - failedAt > LAST_ERROR_GRACE_MS) {
        const why = singleLine(n.last_error) ?? (n.redacted?.includes('last_error')
          ? "service failed (Ironic's policy hides last_error from your project: ask the node's owner or an admin)"
          : 'service failed (Ironic recorded no last_error)');
        throw new SnapshotFailedError(`snapshot of node ${label(n)} failed: ${why}`, n.uuid, n.last_error);
      }
    } else if (state === 'active' && settled && (busySeen || (info?.image_id && info.image_id !== o.previousImageId))) {
      if (info?.state === 'active' && info.image_id) return info as SnapshotInfo & { image_id: string };
      if (n.redacted?.includes('driver_internal_info')) {
        throw new SnapshotFailedError(`node ${label(n)} is active again, but Ironic's policy hides driver_internal_info (where the snapshot's image is recorded) from your project: ask the node's owner or an admin for bmsnap_snapshot`, n.uuid);
      }
      throw new SnapshotFailedError(`node ${label(n)} is active again but recorded no snapshot image (bmsnap_snapshot state: ${info?.state ?? 'none'}); does it use the bmsnap deploy interface?`, n.uuid, n.last_error);
    }
    if (state !== 'active' || n.target_provision_state) busySeen = true;
    if (o.timeoutSeconds > 0 && Date.now() - started > o.timeoutSeconds * 1000) {
      throw new WaitTimeoutError(`timed out after ${o.timeoutSeconds} s waiting for node ${label(n)} (${state}); the snapshot goes on: baremetal node show ${n.uuid}`);
    }
    await sleep(o.pollSeconds * 1000, undefined, o.signal ? { signal: o.signal } : {}).catch(() => undefined);
  }
}

/** Turns the node's progress snapshots (phase, bytes so far) into Progress calls. */
function progressFeeder(progress: Progress | undefined): (p: NonNullable<SnapshotInfo['progress']>) => void {
  let phase = '';
  let bytes = 0;
  return (p) => {
    if (!progress || !p.phase) return;
    if (p.phase !== phase) {
      phase = p.phase;
      bytes = 0;
      progress.phase(p.phase as Parameters<Progress['phase']>[0], p.total ?? 0);
    }
    const now = p.bytes ?? 0;
    if (now > bytes) { progress.advance(now - bytes); bytes = now; }
  };
}

/** last_error as one line (the CLI's errors are one line; the error object keeps it as is). */
export const singleLine = (text: string | null) => (text ? text.replace(/\s*\n\s*/g, ' ').trim() : undefined);
