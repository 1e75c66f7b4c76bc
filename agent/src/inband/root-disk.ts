// Which whole disk holds the running root filesystem: "/" in /proc/self/mountinfo gives the
// device number; /sys/dev/block/MAJ:MIN leads to a partition's disk, and a device-mapper/LVM/md
// device's slaves/ lead to what lies beneath. Every path must end on the same single disk.
import { readFile, readdir, realpath, access } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { RefusedError } from '../errors.js';

/** The MAJ:MIN of the filesystem mounted at MOUNTPOINT (the last mount there wins). */
export function deviceOfMount(mountinfo: string, mountpoint = '/'): string | undefined {
  let found: string | undefined;
  for (const line of mountinfo.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && f[4] === mountpoint) found = f[2];
  }
  return found;
}

/** The whole disks (names in /sys/block) beneath block device MAJ:MIN. */
export async function disksBeneath(majMin: string, sys = '/sys'): Promise<string[]> {
  const dir = await realpath(`${sys}/dev/block/${majMin}`).catch(() => undefined);
  if (!dir) return [];
  return disksOf(dir, sys, 0);
}

async function disksOf(dir: string, sys: string, depth: number): Promise<string[]> {
  if (depth > 8) return [];
  const slaves = await readdir(`${dir}/slaves`).catch(() => [] as string[]);
  if (slaves.length) {
    const below = await Promise.all(slaves.map(async (s) => disksOf(await realpath(`${dir}/slaves/${s}`), sys, depth + 1)));
    return [...new Set(below.flat())];
  }
  const here = await describe(dir);
  return [here.disk ?? here.name];
}

export interface BlockPlace {
  /** Its sysfs directory and kernel name (sda2, dm-0). */
  dir: string;
  name: string;
  /** device-mapper name, for a dm device. */
  dm?: string;
  /** The whole disk it is or is a partition of (not for dm devices). */
  disk?: string;
  /** Byte offset of a partition on its disk (0 otherwise). */
  start: number;
}

async function describe(dir: string): Promise<BlockPlace> {
  const name = basename(dir);
  const dm = await readFile(`${dir}/dm/name`, 'utf8').then((s) => s.trim(), () => undefined);
  if (dm !== undefined) return { dir, name, dm, start: 0 };
  if (await access(`${dir}/partition`).then(() => true, () => false)) {
    const start = Number((await readFile(`${dir}/start`, 'utf8')).trim()) * 512;
    return { dir, name, disk: basename(dirname(dir)), start };
  }
  return { dir, name, disk: name, start: 0 };
}

/** Where block device MAJ:MIN sits (undefined if sysfs does not know it). */
export async function locate(sys: string, majMin: string): Promise<BlockPlace | undefined> {
  const dir = await realpath(`${sys}/dev/block/${majMin}`).catch(() => undefined);
  return dir ? describe(dir) : undefined;
}

/** The single whole disk under "/", or a RefusedError saying why there is none. */
export async function rootDisk(proc = '/proc', sys = '/sys'): Promise<string> {
  const mountinfo = await readFile(`${proc}/self/mountinfo`, 'utf8').catch(() => {
    throw new RefusedError(`cannot read ${proc}/self/mountinfo: is /proc mounted?`);
  });
  const dev = deviceOfMount(mountinfo);
  if (!dev) throw new RefusedError('cannot find the disk holding /: no mount for / in /proc/self/mountinfo');
  const disks = await disksBeneath(dev, sys);
  if (!disks.length) throw new RefusedError(`cannot find the disk holding /: device ${dev} is not a block device in ${sys} (network, overlay or RAM root?)`);
  if (disks.length > 1) throw new RefusedError(`/ spans several disks (${disks.join(', ')}): kexec mode images one disk`);
  return disks[0]!;
}
