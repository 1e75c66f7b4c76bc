// image.install_bootloader: what the conductor asks after writing a whole-disk image in UEFI
// mode (ironic-python-agent then adds an NVRAM boot entry for the image's own loader). A bmsnap
// image is a whole disk with its ESP and bootloader as captured; the ramdisk carries no
// efibootmgr, so the firmware starts it by its removable-media path (\EFI\BOOT\BOOTX64.EFI,
// which distributions install) and nothing is written here. A partition image (a root UUID to
// install into) is not something bmsnap writes: refused in one line.
import { CommandFailure } from '../command-runner.js';
import type { Extension } from './types.js';

export function imageExtension(): Extension {
  return {
    name: 'image',
    commands: {
      install_bootloader: {
        async: true,
        async run(params) {
          if (params.root_uuid) {
            throw new CommandFailure('the bmsnap ramdisk writes whole-disk images only; it installs no bootloader into a partition image', 'InvalidArguments');
          }
          return { bootloader: 'the image\'s own (whole-disk image; no NVRAM entry added)' };
        },
      },
    },
  };
}
