// Errors of OpenStack authentication (Keystone, clouds.yaml, endpoints). Messages never contain
// secrets: they name the setting that is missing or the status Keystone answered.
import { BmsnapError } from '../errors.js';

export class AuthError extends BmsnapError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'BMSNAP_AUTH', options);
  }
}
