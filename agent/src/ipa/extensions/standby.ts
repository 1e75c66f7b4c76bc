// standby.*: what the conductor asks around writing an image. sync flushes buffers before the
// node is powered off (used when disable_power_off is set, and harmless otherwise);
// get_partition_uuids is asked after write_image - a whole-disk image has nothing to report
// (ironic-python-agent answers the same for one), so the conductor installs no bootloader.
import { execa } from 'execa';
import type { Extension } from './types.js';

export function standbyExtension(): Extension {
  return {
    name: 'standby',
    commands: {
      sync: { async: false, async run() { await execa('sync', [], { reject: false }); return null; } },
      get_partition_uuids: { async: false, async run() { return {}; } },
    },
  };
}
