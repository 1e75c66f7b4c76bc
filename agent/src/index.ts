// bmsnap as a library (package entry point): the calls automation pipelines use.
export { serverImageCreate, type ServerImageCreateOptions, type ServerImageCreateResult } from './trigger/server-image-create.js';
export { NotFoundError, NovaError, SnapshotFailedError, WaitTimeoutError } from './trigger/errors.js';
export { BmsnapError, UsageError, AbortedError, describeError } from './errors.js';
export type { Progress } from './encoder/progress.js';
export { AuthError } from './openstack/errors.js';
export { IronicApiError } from './ironic/http.js';
