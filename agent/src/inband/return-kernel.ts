// The user's running kernel, its initrd and command line: handed to the ramdisk so it can kexec
// back into the same OS after the snapshot.
import { access, readFile } from 'node:fs/promises';
import { release } from 'node:os';
import { RefusedError } from '../errors.js';

export interface ReturnKernel { kernel: string; initrd?: string; cmdline: string }

const exists = (p: string) => access(p).then(() => true, () => false);
async function first(paths: string[]): Promise<string | undefined> {
  for (const p of paths) if (await exists(p)) return p;
  return undefined;
}

/** The command line to boot again with: the running one minus an earlier bmsnap.result. */
export function returnCmdline(procCmdline: string): string {
  return procCmdline.trim().split(/\s+/).filter((w) => w && !w.startsWith('bmsnap.result=')).join(' ');
}

export async function findReturnKernel(given: { kernel?: string; initrd?: string } = {}, proc = '/proc'): Promise<ReturnKernel> {
  const cmdline = returnCmdline(await readFile(`${proc}/cmdline`, 'utf8'));
  const rel = release();
  const bootImage = /(?:^|\s)BOOT_IMAGE=(?:\([^)]*\))?(\S+)/.exec(cmdline)?.[1];
  const kernel = given.kernel ?? await first([
    `/boot/vmlinuz-${rel}`,
    ...(bootImage ? [bootImage, `/boot${bootImage}`] : []),
    '/boot/vmlinuz',
  ]);
  if (!kernel) throw new RefusedError(`cannot find the running kernel (/boot/vmlinuz-${rel}) for the way back: give --return-kernel PATH, or --no-return`);
  if (given.kernel && !(await exists(given.kernel))) throw new RefusedError(`--return-kernel ${given.kernel} does not exist`);
  const initrd = given.initrd ?? await first([`/boot/initrd.img-${rel}`, `/boot/initramfs-${rel}.img`, '/boot/initrd.img', '/boot/initramfs.img']);
  if (given.initrd && !(await exists(given.initrd))) throw new RefusedError(`--return-initrd ${given.initrd} does not exist`);
  return { kernel, ...(initrd ? { initrd } : {}), cmdline };
}
