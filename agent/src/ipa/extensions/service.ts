// service.* commands: what the conductor calls during servicing (the snapshot step).
import type { Logger } from 'pino';
import { runSnapshot, SNAPSHOT_STEP } from '../steps/snapshot.js';
import { stepExtension } from './step-extension.js';
import type { Extension } from './types.js';

export function serviceExtension(deps: { log?: Logger }): Extension {
  return stepExtension('service', SNAPSHOT_STEP, {
    run: (params, ctx) => runSnapshot(params, ctx, deps),
    // Echo the step without secret args: Ironic logs and stores command results.
    echo: ({ args, ...step }) => {
      const { glance_token: _t, ...rest } = args ?? {};
      return { ...step, args: rest };
    },
  });
}
