// Point-in-time copies of the disk's LVM volumes, made with device-mapper alone (what LVM does
// for `lvcreate -s`, minus any change to the disk): for each volume a second linear map of the
// same extents ("real"), a copy-on-write store in RAM (or a slice of a spare device), then, in
// one short window with the volumes suspended (the kernel freezes their filesystems), a
// snapshot of "real" and the volume's own table swapped for a snapshot-origin over "real". From
// then on every write to the volume first copies the old chunk into the store, so the snapshot
// keeps reading the volume as it was in that window. Nothing is written to the disk's LVM
// metadata and no extents are allocated: the image shows the volume group untouched.
// Teardown puts the volumes' own tables back and removes everything, whatever happened.
import { freemem } from 'node:os';
import type { Logger } from 'pino';
import { execa } from 'execa';
import { DM_ENV, dmsetup } from '../../blockdev/dmsetup.js';
import { ramCowStore, type CowStore } from '../../blockdev/ram-cow.js';
import { BmsnapError } from '../../errors.js';
import { tableSectors, tableText } from './dm-table.js';
import type { VolumePlan } from './disk-mounts.js';

/** Setting up, checking or removing the point-in-time copy failed. */
export class LiveCaptureError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_LIVE');
  }
}
const fail = (m: string) => new LiveCaptureError(m);

export type CowPlace = { ram: string } | { device: string; bytes: number };

export interface VolumeSnapshot {
  volume: VolumePlan;
  /** The snapshot's block device (read it, never write it). */
  device: string;
}

export interface SnapshotSet {
  snapshots: VolumeSnapshot[];
  /** How long the volumes were suspended (their filesystems frozen). */
  freezeSeconds: number;
  pointInTime: Date;
  /** Throws if a store overflowed (the snapshot is then invalid and reads fail). */
  check(): Promise<void>;
  release(): Promise<void>;
}

export async function snapshotVolumes(volumes: readonly VolumePlan[], cow: CowPlace, log?: Logger): Promise<SnapshotSet> {
  const prefix = `bmsnap-live-${process.pid}`;
  const undo: (() => Promise<unknown>)[] = [];
  const release = async () => {
    for (const u of undo.splice(0).reverse()) await u().catch((err: Error) => log?.error({ error: err.message }, 'live snapshot teardown'));
  };
  try {
    const sectors = volumes.map((v) => tableSectors(v.segments));
    const total = sectors.reduce((a, b) => a + b, 0);
    const prepared: { v: VolumePlan; snap: string }[] = [];
    let cowOffset = 0;
    for (const [i, v] of volumes.entries()) {
      const real = `${prefix}-${i}-real`;
      await dmsetup(['create', real, '--table', tableText(v.segments)], fail);
      undo.push(() => dmsetup(['remove', '--retry', real], fail));
      let store: CowStore;
      if ('ram' in cow) {
        store = await ramCowStore(`${cow.ram}/${prefix}-${i}.cow`, Math.min(sectors[i]! * 512, freemem()), fail);
      } else {
        // a share of the spare device proportional to the volume's size
        const share = Math.floor((cow.bytes / 512) * (sectors[i]! / total));
        const name = `${prefix}-${i}-cow`;
        await dmsetup(['create', name, '--table', `0 ${share} linear ${cow.device} ${cowOffset}`], fail);
        cowOffset += share;
        store = { device: `/dev/mapper/${name}`, dispose: () => dmsetup(['remove', '--retry', name], fail).then(() => undefined) };
      }
      undo.push(() => store.dispose());
      const snap = `${prefix}-${i}-snap`;
      const realDev = await majMin(real);
      // Everything loaded beforehand, inactive: the snapshot (non-persistent, 4 KiB chunks; not
      // active until resumed, so writes meanwhile do not touch it) and the volume's new table.
      await dmsetup(['create', snap, '--notable'], fail);
      undo.push(() => dmsetup(['remove', '--retry', snap], fail));
      await dmsetup(['load', snap, '--table', `0 ${sectors[i]!} snapshot ${realDev} ${store.device} N 8`], fail);
      await dmsetup(['reload', v.name, '--table', `0 ${sectors[i]!} snapshot-origin ${realDev}`], fail);
      undo.push(() => dmsetup(['clear', v.name], fail));   // drops the inactive table if never swapped in
      prepared.push({ v, snap });
    }

    // --- the freeze window: suspend the volumes (the kernel freezes their filesystems; the
    // caller synced first, so there is little left to flush), then resume the snapshots and
    // the volumes, which swaps their new tables in. Two dmsetup runs in one shell, in a process
    // group of its own so that a Ctrl-C cannot stop it half-way; if the resume fails, the
    // volumes get their own tables back and resume. ---
    const names = (l: string[]) => l.map((n) => `'${n}'`).join(' ');
    const origins = names(prepared.map((p) => p.v.name));
    const script = `dmsetup suspend ${origins} || exit 3
if dmsetup resume ${names(prepared.map((p) => p.snap))} ${origins}; then exit 0; fi
for o in ${origins}; do dmsetup clear "$o"; dmsetup resume "$o"; done
exit 4`;
    const t0 = process.hrtime.bigint();
    const pointInTime = new Date();
    const window = await execa('sh', ['-c', script], { reject: false, env: DM_ENV, stdin: 'ignore', detached: true, cleanup: false });
    const freezeSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (window.exitCode !== 0) {
      const why = String(window.stderr).trim().split('\n')[0] || `exit ${window.exitCode ?? window.signal}`;
      throw new LiveCaptureError(`${window.exitCode === 3 ? 'suspending' : 'resuming'} ${prepared.map((p) => p.v.name).join(', ')} for the snapshot failed: ${why}`);
    }
    // Teardown (last in, first out): each volume gets its own table back first, then its
    // snapshot, store and "real" map go.
    for (const p of prepared) {
      undo.push(async () => {
        await dmsetup(['reload', p.v.name, '--table', tableText(p.v.segments)], fail);
        await dmsetup(['resume', p.v.name], fail);
      });
    }
    log?.info({ volumes: volumes.map((v) => v.name), freezeSeconds }, 'point-in-time copy taken');
    const snapshots = prepared.map((p) => ({ volume: p.v, device: `/dev/mapper/${p.snap}` }));
    return {
      snapshots,
      freezeSeconds,
      pointInTime,
      async check() {
        for (const p of prepared) {
          const status = await dmsetup(['status', p.snap], fail);
          if (/Invalid|Overflow/.test(status)) {
            throw new LiveCaptureError(`the copy-on-write store of ${p.v.name} filled up while the capture ran (too much written meanwhile): give a larger or spare device with --cow-device, or use --mode kexec`);
          }
        }
      },
      release,
    };
  } catch (err) {
    await release();
    throw err;
  }
}

/** MAJ:MIN of a device-mapper device, for tables (no device node or udev needed). */
async function majMin(name: string): Promise<string> {
  return dmsetup(['info', '-c', '--noheadings', '--separator', ':', '-o', 'major,minor', name], fail);
}
