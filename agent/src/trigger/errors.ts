// Failures of `server-image-create`: what was asked for does not exist, Nova said no, or the
// snapshot itself failed on the node (the message carries the node's last_error).
import { BmsnapError } from '../errors.js';

/** No server or node by that name or id, or a server that is not on an Ironic node. */
export class NotFoundError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_NOT_FOUND');
  }
}

export class NovaError extends BmsnapError {
  constructor(message: string, readonly status?: number) {
    super(message, 'BMSNAP_NOVA');
  }
}

/** The node is in no state to be snapshotted, or the snapshot step failed (last_error). */
export class SnapshotFailedError extends BmsnapError {
  constructor(message: string, readonly node: string, readonly lastError?: string | null) {
    super(message, 'BMSNAP_SNAPSHOT_FAILED');
  }
}

/** --timeout passed while the snapshot was still running (it goes on on the node). */
export class WaitTimeoutError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_TIMEOUT');
  }
}
