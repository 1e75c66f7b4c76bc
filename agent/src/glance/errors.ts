// Errors from Glance, with the HTTP status when there is one. Messages never
// contain tokens: they are built from the status and Glance's own explanation only.
import { BmsnapError } from '../errors.js';

export class GlanceError extends BmsnapError {
  constructor(message: string, readonly status?: number, options?: { cause?: unknown }) {
    super(message, 'BMSNAP_GLANCE', options);
  }
  /** Worth retrying with a fresh image: server errors and cut connections, not our mistakes. */
  get retryable(): boolean {
    return this.status === undefined || this.status >= 500;
  }
}

/** The image's stored size or digests differ from what bmsnap sent. */
export class VerificationError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_VERIFY');
  }
}
