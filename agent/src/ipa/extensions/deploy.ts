// deploy.* commands: the in-band deploy steps the conductor reads on the first heartbeat in
// "deploy wait" and runs. The one step is write_image, which the bmsnap deploy interface calls
// with a Glance credential in the command parameters.
import type { Logger } from 'pino';
import { runWriteImage, WRITE_IMAGE_STEP } from '../steps/write-image.js';
import { stepExtension } from './step-extension.js';
import type { Extension } from './types.js';

export function deployExtension(deps: { log?: Logger }): Extension {
  return stepExtension('deploy', WRITE_IMAGE_STEP, { run: (params, ctx) => runWriteImage(params, ctx, deps) });
}
