// Loading a kernel with kexec and jumping into it, from a running OS: cleanly through systemd
// when it runs the node, else by hand (sync, every disk filesystem read-only, kexec -e).
import { access, readFile } from 'node:fs/promises';
import { execa } from 'execa';
import { RefusedError } from '../errors.js';

export interface KexecImage { kernel: string; initrd?: string; cmdline: string }

export async function kexecLoad(kexec: string, img: KexecImage): Promise<void> {
  const r = await execa(kexec, ['-l', img.kernel, ...(img.initrd ? [`--initrd=${img.initrd}`] : []), `--command-line=${img.cmdline}`],
    { reject: false, stdin: 'ignore', all: true });
  if (r.exitCode !== 0) throw new RefusedError(`kexec -l ${img.kernel} failed: ${String(r.all).trim().split('\n').pop() || `exit ${r.exitCode}`}`);
}

export async function kexecUnload(kexec: string): Promise<void> {
  await execa(kexec, ['-u'], { reject: false, stdin: 'ignore' });
}

const DISK_FS = /^(ext[234]|xfs|btrfs|vfat|f2fs|jfs|reiserfs|ntfs3?|exfat)$/;

/** Mount points of disk-backed filesystems, deepest first. */
export function diskMounts(procMounts: string): string[] {
  const out: string[] = [];
  for (const line of procMounts.split('\n')) {
    const [dev, mp, fs] = line.split(' ');
    if (dev?.startsWith('/dev/') && fs && DISK_FS.test(fs) && mp) out.push(mp.replace(/\\040/g, ' '));
  }
  return [...new Set(out)].sort((a, b) => b.length - a.length);
}

/**
 * Shut the node down into the loaded kernel. With systemd: `systemctl kexec` (services stop,
 * filesystems unmount). Without: sync, remount every disk filesystem read-only (/ last; if / will
 * not go read-only the hand-over stops, as the disk would be imaged unclean), sync, kexec -e.
 * Returns only on failure.
 */
export async function kexecReboot(kexec: string, warn: (msg: string) => void): Promise<never> {
  if (await access('/run/systemd/system').then(() => true, () => false)) {
    const r = await execa('systemctl', ['kexec'], { reject: false, stdin: 'ignore', all: true });
    if (r.exitCode !== 0) throw new RefusedError(`systemctl kexec failed: ${String(r.all).trim().split('\n').pop()}`);
    await new Promise(() => {});   // systemd stops us on the way down
  }
  await execa('sync', { reject: false });
  for (const mp of diskMounts(await readFile('/proc/mounts', 'utf8'))) {
    const r = await execa('mount', ['-o', 'remount,ro', mp], { reject: false, stdin: 'ignore', all: true });
    if (r.exitCode === 0) continue;
    const why = String(r.all).trim().split('\n').pop() ?? '';
    if (mp === '/') {
      await execa('mount', ['-o', 'remount,rw', '/'], { reject: false });
      throw new RefusedError(`cannot remount / read-only (${why || 'busy'}): close what writes to it, or use --mode live`);
    }
    warn(`${mp} stays read-write (${why || 'busy'}); it is imaged as it is`);
  }
  await execa('sync', { reject: false });
  const r = await execa(kexec, ['-e'], { reject: false, stdin: 'ignore', all: true });
  throw new RefusedError(`kexec -e failed: ${String(r.all).trim().split('\n').pop() || `exit ${r.exitCode}`}`);
}
