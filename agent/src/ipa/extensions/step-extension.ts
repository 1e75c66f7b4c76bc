// The extension behind one kind of in-band step (service, deploy), as Ironic drives it:
// get_<kind>_steps advertises the steps under the hardware manager's name and version (Ironic
// caches both), execute_<kind>_step runs one asynchronously and echoes it in the result - the
// echo is how Ironic matches a finished command to its current step.
import type { CommandContext } from '../command-runner.js';
import { CommandFailure } from '../command-runner.js';
import type { Extension } from './types.js';

/** The "hardware manager" name Ironic keys steps and versions by. */
export const HARDWARE_MANAGER = 'BmsnapHardwareManager';
export const HARDWARE_MANAGER_VERSION = '1.0';

export interface StepDecl { step: string; interface: string }
export interface StepCall { step?: string; interface?: string; args?: Record<string, unknown> }

export function stepExtension(kind: 'service' | 'deploy', decl: StepDecl, o: {
  run(params: Record<string, unknown>, ctx: CommandContext): Promise<unknown>;
  /** The step as echoed in the result (e.g. without secret args); default: as given. */
  echo?(step: StepCall): StepCall;
}): Extension {
  return {
    name: kind,
    commands: {
      [`get_${kind}_steps`]: {
        async: false,
        async run() {
          return {
            [`${kind}_steps`]: { [HARDWARE_MANAGER]: [decl] },
            hardware_manager_version: { [HARDWARE_MANAGER]: HARDWARE_MANAGER_VERSION },
          };
        },
      },
      [`execute_${kind}_step`]: {
        async: true,
        async run(params, ctx) {
          const step = params.step as StepCall | undefined;
          if (!step || step.step !== decl.step || step.interface !== decl.interface) {
            throw new CommandFailure(`unknown ${kind} step ${step?.interface}.${step?.step}`, 'UnknownStep');
          }
          const result = await o.run(params, ctx);
          return { [`${kind}_result`]: result, [`${kind}_step`]: o.echo ? o.echo(step) : step };
        },
      },
    },
  };
}
