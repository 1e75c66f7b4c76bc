// Live capture of the disk holding "/", as one Source: plain partitions mounted read-write are
// held still, the LVM volumes get device-mapper snapshots in a short freeze, and the source
// reads the disk with each snapshotted volume's extents taken from its snapshot - the disk as it
// was in the freeze, while the node goes on writing. release() undoes everything.
import { execa } from 'execa';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { dmsetup } from '../../blockdev/dmsetup.js';
import { onTmpfs } from '../../blockdev/ram-cow.js';
import { RefusedError } from '../../errors.js';
import type { Volume } from '../../map/volumes.js';
import { composedSource } from '../../source/composed-source.js';
import { openSource, type Source } from '../../source/open-source.js';
import { planLiveCapture, type LivePlan } from './disk-mounts.js';
import { holdStill, type Held } from './hold-still.js';
import { snapshotVolumes, type CowPlace } from './volume-snapshots.js';

export interface LiveCapture {
  plan: LivePlan;
  source: Source;
  volumes: Volume[];
  freezeSeconds: number;
  pointInTime: Date;
  held: Held[];
  /** Throws (saying so) if a copy-on-write store overflowed: the snapshot then reads as I/O errors. */
  check(): Promise<void>;
  /** Undoes everything; returns what could not be undone (for the user to fix by hand). */
  release(): Promise<string[]>;
}

/** What can be snapshotted and how, or a RefusedError; changes nothing. */
export async function planForDisk(disk: string): Promise<LivePlan> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  const plan = await planLiveCapture(disk, mountinfo, { dmTable: (name) => dmsetup(['table', name], (m) => new RefusedError(m)) });
  if (!plan.volumes.length) throw new RefusedError(`nothing on ${disk} is mounted from an LVM volume, so there is nothing to snapshot; use --mode kexec`);
  return plan;
}

/** A directory in RAM for the copy-on-write files: never on the disk being copied. */
export async function ramDirForCow(): Promise<{ dir: string; dispose(): Promise<void> }> {
  for (const base of [process.env.BMSNAP_BUNDLE, '/dev/shm', '/run'].filter((d): d is string => !!d)) {
    if (!(await onTmpfs(base))) continue;
    const dir = await mkdtemp(join(base, 'bmsnap-cow-')).catch(() => undefined);
    if (dir) return { dir, dispose: () => rm(dir, { recursive: true, force: true }) };
  }
  throw new RefusedError('no tmpfs (RAM) for the copy-on-write store: /dev/shm and /run are not tmpfs here; give a spare device with --cow-device');
}

export async function startLiveCapture(plan: LivePlan, cow: CowPlace, log?: Logger): Promise<LiveCapture> {
  // Flush everything first (before anything is frozen: sync and frozen filesystems are best kept
  // apart), so that the freezes have little left to write.
  await execa('sync', { reject: false, stdin: 'ignore' });
  const still = await holdStill(plan.plain, log);
  let set: Awaited<ReturnType<typeof snapshotVolumes>> | undefined;
  const opened: Source[] = [];
  const release = async () => {
    for (const s of opened.splice(0)) await s.close().catch(() => undefined);
    await set?.release();
    return still.release();
  };
  try {
    set = await snapshotVolumes(plan.volumes, cow, log);
    const disk = await openSource(`/dev/${plan.disk}`);
    opened.push(disk);
    const volumes: Volume[] = [];
    for (const s of set.snapshots) {
      const snap = await openSource(s.device);
      opened.push(snap);
      volumes.push({ name: s.volume.name, reader: snap, segments: s.volume.onDisk });
    }
    const overlays = volumes.flatMap((v) => v.segments.map((g) => ({ offset: g.diskOffset, length: g.length, reader: v.reader, from: g.volumeOffset })));
    const source = composedSource(disk, overlays, disk.path, async () => undefined);
    return { plan, source, volumes, freezeSeconds: set.freezeSeconds, pointInTime: set.pointInTime, held: still.held, check: set.check, release };
  } catch (err) {
    const left = await release();
    if (left.length && err instanceof Error) err.message += `; ${left.join('; ')}`;
    throw err;
  }
}

