// standby.sync: flush buffers before the conductor powers the node off (used when
// disable_power_off is set, and harmless otherwise). The agent never writes the disk.
import { execa } from 'execa';
import type { Extension } from './types.js';

export function standbyExtension(): Extension {
  return {
    name: 'standby',
    commands: {
      sync: { async: false, async run() { await execa('sync', [], { reject: false }); return null; } },
    },
  };
}
