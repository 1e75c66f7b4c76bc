// Errors of incremental snapshots: one line each, like every BmsnapError.
import { BmsnapError } from '../errors.js';

/** A cluster index that cannot be trusted: truncated, a bad checksum, inconsistent runs. */
export class ClusterIndexError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_CLUSTER_INDEX');
  }
}

/** The parent's index does not describe a disk a delta can be taken against (size, cluster size). */
export class ParentMismatchError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_PARENT_MISMATCH');
  }
}

/** An image chain (a delta and its parents) that cannot be read or does not hold together. */
export class ChainError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_CHAIN');
  }
}
