// Can this node kexec into the snapshot ramdisk? Each check reads the real system and throws a
// RefusedError with the reason: not root, no kexec in the kernel or no kexec tool, a locked-down
// kernel or Secure Boot (both block kexec_load of an unsigned ramdisk).
import { access, readFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { RefusedError } from '../errors.js';

const EFI_SECURE_BOOT = 'SecureBoot-8be4df61-93ca-11d2-aa0d-e98c0330b116';

const ROOT_REASON = {
  kexec: 'it loads a kernel and shuts the node down',
  live: 'it suspends volumes and creates device-mapper snapshots',
};

export function checkRoot(mode: keyof typeof ROOT_REASON = 'kexec', uid = process.getuid?.()): void {
  if (uid !== 0) throw new RefusedError(`${mode} mode must run as root (uid ${uid ?? 'unknown'}): ${ROOT_REASON[mode]}`);
}

/** The first executable `kexec` on PATH. */
export async function findKexec(path = process.env.PATH ?? ''): Promise<string> {
  for (const dir of [...path.split(delimiter).filter(Boolean), '/usr/sbin', '/sbin']) {
    const p = join(dir, 'kexec');
    if (await access(p, 1).then(() => true, () => false)) return p;
  }
  throw new RefusedError('kexec mode needs the kexec tool (kexec-tools), and none is on PATH');
}

export async function checkKexecKernel(sys = '/sys'): Promise<void> {
  if (!(await access(`${sys}/kernel/kexec_loaded`).then(() => true, () => false))) {
    throw new RefusedError(`${sys}/kernel/kexec_loaded is missing: this kernel has no kexec support (or sysfs is not mounted)`);
  }
}

/** "[none] integrity confidentiality" -> "none"; undefined when the kernel has no lockdown LSM. */
export function lockdownMode(text: string): string | undefined {
  return /\[(\w+)\]/.exec(text)?.[1];
}

export async function checkNotLockedDown(sys = '/sys'): Promise<void> {
  const text = await readFile(`${sys}/kernel/security/lockdown`, 'utf8').catch(() => undefined);
  const mode = text === undefined ? undefined : lockdownMode(text);
  if (mode && mode !== 'none') {
    throw new RefusedError(`the kernel is locked down (${mode}): it refuses to kexec an unsigned ramdisk; use the Ironic snapshot step or --mode live`);
  }
  // efivarfs: 4 bytes of attributes, then the value (1 = Secure Boot on)
  const sb = await readFile(`${sys}/firmware/efi/efivars/${EFI_SECURE_BOOT}`).catch(() => undefined);
  if (sb && sb.length >= 5 && sb[4] === 1) {
    throw new RefusedError('Secure Boot is on: the kernel will not kexec an unsigned ramdisk; use the Ironic snapshot step or --mode live');
  }
}
