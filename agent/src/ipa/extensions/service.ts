// service.* commands: what the conductor calls during servicing.
import type { Logger } from 'pino';
import { CommandFailure } from '../command-runner.js';
import { runSnapshot, SNAPSHOT_STEP } from '../steps/snapshot.js';
import type { Extension } from './types.js';

/** The "hardware manager" name Ironic keys steps and versions by. */
export const HARDWARE_MANAGER = 'BmsnapHardwareManager';
export const HARDWARE_MANAGER_VERSION = '1.0';

export function serviceExtension(deps: { log?: Logger }): Extension {
  return {
    name: 'service',
    commands: {
      get_service_steps: {
        async: false,
        async run() {
          return {
            service_steps: { [HARDWARE_MANAGER]: [SNAPSHOT_STEP] },
            hardware_manager_version: { [HARDWARE_MANAGER]: HARDWARE_MANAGER_VERSION },
          };
        },
      },
      execute_service_step: {
        async: true,
        async run(params, ctx) {
          const step = params.step as { step?: string; interface?: string; args?: Record<string, unknown> } | undefined;
          if (!step || step.step !== SNAPSHOT_STEP.step || step.interface !== SNAPSHOT_STEP.interface) {
            throw new CommandFailure(`unknown service step ${step?.interface}.${step?.step}`, 'UnknownStep');
          }
          const service_result = await runSnapshot(params, ctx, deps);
          // Echo the step without secret args: Ironic logs and stores command results.
          const { glance_token: _t, ...args } = step.args ?? {};
          return { service_result, service_step: { ...step, args } };
        },
      },
    },
  };
}
