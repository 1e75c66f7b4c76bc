// deploy.* commands: the in-band deploy steps the conductor reads on the first heartbeat in
// "deploy wait" (get_deploy_steps) and runs (execute_deploy_step). The one step is write_image,
// which the bmsnap deploy interface calls with a Glance credential.
import type { Logger } from 'pino';
import { CommandFailure } from '../command-runner.js';
import { runWriteImage, WRITE_IMAGE_STEP } from '../steps/write-image.js';
import { HARDWARE_MANAGER, HARDWARE_MANAGER_VERSION } from './service.js';
import type { Extension } from './types.js';

export function deployExtension(deps: { log?: Logger }): Extension {
  return {
    name: 'deploy',
    commands: {
      get_deploy_steps: {
        async: false,
        async run() {
          return {
            deploy_steps: { [HARDWARE_MANAGER]: [WRITE_IMAGE_STEP] },
            hardware_manager_version: { [HARDWARE_MANAGER]: HARDWARE_MANAGER_VERSION },
          };
        },
      },
      execute_deploy_step: {
        async: true,
        async run(params, ctx) {
          const step = params.step as { step?: string; interface?: string; args?: Record<string, unknown> } | undefined;
          if (!step || step.step !== WRITE_IMAGE_STEP.step || step.interface !== WRITE_IMAGE_STEP.interface) {
            throw new CommandFailure(`unknown deploy step ${step?.interface}.${step?.step}`, 'UnknownStep');
          }
          const deploy_result = await runWriteImage(params, ctx, deps);
          // Ironic matches the finished command to its current step by this echo.
          return { deploy_result, deploy_step: step };
        },
      },
    },
  };
}
