// What of the disk is mounted, and how live capture can hold each part still:
//  - a filesystem on a linear device-mapper volume over the disk's partitions (LVM): a
//    device-mapper snapshot, taken in a freeze of well under a second;
//  - a filesystem mounted read-write straight from a partition (/boot, the ESP): nothing can be
//    slipped beneath it, so it is held still (frozen, or remounted read-only) for the whole
//    capture - fine for /boot, not for "/", which is refused;
//  - read-only mounts: nothing to do.
// Anything else on the disk (stacked or non-linear device-mapper: crypt, thin, raid) is refused.
import { readFile, readdir } from 'node:fs/promises';
import { RefusedError } from '../../errors.js';
import { disksBeneath, locate } from '../root-disk.js';
import { parseTable, type LinearSegment } from './dm-table.js';

export interface MountedDevice {
  majMin: string;
  /** Every place it is mounted (bind mounts included), the shortest first. */
  mountpoints: string[];
  fstype: string;
  /** The filesystem (superblock) is read-only, whatever the mount options say. */
  readOnly: boolean;
}

/** Block-backed mounts from /proc/self/mountinfo, one entry per device. */
export function mountedDevices(mountinfo: string): MountedDevice[] {
  const byDev = new Map<string, MountedDevice>();
  for (const line of mountinfo.split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (sep < 0 || f.length < sep + 4) continue;
    const majMin = f[2]!;
    if (majMin.startsWith('0:')) continue;   // proc, tmpfs, overlay...: no block device
    const mountpoint = unescape(f[4]!);
    const superRo = f[sep + 3]!.split(',').includes('ro');
    const d = byDev.get(majMin) ?? { majMin, mountpoints: [], fstype: f[sep + 1]!, readOnly: superRo };
    d.mountpoints.push(mountpoint);
    byDev.set(majMin, d);
  }
  for (const d of byDev.values()) d.mountpoints.sort((a, b) => a.length - b.length || a.localeCompare(b));
  return [...byDev.values()];
}

// mountinfo escapes space, tab, newline and backslash as \ooo
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export interface VolumePlan {
  /** device-mapper name (vg-lv for LVM). */
  name: string;
  majMin: string;
  mountpoints: string[];
  fstype: string;
  segments: LinearSegment[];
  /** Where each segment's bytes lie on the disk. */
  onDisk: { volumeOffset: number; diskOffset: number; length: number }[];
}

export interface PlainMount {
  majMin: string;
  device: string;
  mountpoint: string;
  fstype: string;
}

export interface LivePlan {
  disk: string;
  volumes: VolumePlan[];
  plain: PlainMount[];
  /** Mountpoints of read-only filesystems on the disk (left as they are). */
  readOnly: string[];
}

export interface PlanDeps {
  sys?: string;
  /** `dmsetup table NAME`. */
  dmTable(name: string): Promise<string>;
}

export async function planLiveCapture(disk: string, mountinfo: string, deps: PlanDeps): Promise<LivePlan> {
  const sys = deps.sys ?? '/sys';
  const plan: LivePlan = { disk, volumes: [], plain: [], readOnly: [] };
  for (const m of mountedDevices(mountinfo)) {
    const where = m.mountpoints[0]!;
    const loc = await locate(sys, m.majMin);
    if (!loc) continue;
    if (loc.dm === undefined) {
      if (loc.disk !== disk) continue;
      if (m.readOnly) { plan.readOnly.push(where); continue; }
      if (m.mountpoints.includes('/')) {
        throw new RefusedError(`/ is mounted straight from the partition /dev/${loc.name}: a point-in-time copy needs it on LVM (device-mapper), so live mode cannot guarantee a consistent image; use --mode kexec`);
      }
      plan.plain.push({ majMin: m.majMin, device: `/dev/${loc.name}`, mountpoint: where, fstype: m.fstype });
      continue;
    }
    // device-mapper: only a linear map straight onto this disk's partitions can be snapshotted
    const disks = await disksBeneath(m.majMin, sys);
    if (!disks.includes(disk)) continue;
    const what = `${where} (on ${loc.dm})`;
    if (disks.length > 1) throw new RefusedError(`${what} spans ${disks.join(', ')}: live mode images one disk; use the Ironic snapshot step`);
    if (m.readOnly) { plan.readOnly.push(where); continue; }
    const below = await Promise.all((await readdir(`${loc.dir}/slaves`).catch(() => [] as string[]))
      .map(async (s) => locate(sys, (await readFile(`${loc.dir}/slaves/${s}/dev`, 'utf8')).trim())));
    if (below.some((b) => b?.dm !== undefined)) throw new RefusedError(`${what} is device-mapper stacked on device-mapper (crypt, raid, thin?): live mode snapshots plain LVM volumes only; use --mode kexec`);
    const parsed = parseTable(await deps.dmTable(loc.dm));
    if ('unsupported' in parsed) throw new RefusedError(`${what} is ${parsed.unsupported}: live mode snapshots linear (LVM) volumes only; use --mode kexec`);
    const placed: VolumePlan['onDisk'] = [];
    for (const s of parsed.segments) {
      const dev = await locate(sys, s.device);
      if (!dev || dev.disk !== disk) throw new RefusedError(`${what} maps onto ${s.device}, which is not on ${disk}`);
      placed.push({ volumeOffset: s.start * 512, diskOffset: dev.start + s.offset * 512, length: s.length * 512 });
    }
    plan.volumes.push({ name: loc.dm, majMin: m.majMin, mountpoints: m.mountpoints, fstype: m.fstype, segments: parsed.segments, onDisk: placed });
  }
  return plan;
}
