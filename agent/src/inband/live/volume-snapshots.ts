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
import { dmsetup } from '../../blockdev/dmsetup.js';
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
    const prepared: { v: VolumePlan; real: string; cow: string; snap: string; sectors: number }[] = [];
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
      prepared.push({ v, real: await majMin(real), cow: store.device, snap: `${prefix}-${i}-snap`, sectors: sectors[i]! });
    }

    // --- the freeze window: as little as possible between suspend and resume (the caller
    // synced first, so the suspend has little left to flush) ---
    const suspended: VolumePlan[] = [];
    const swapped: typeof prepared = [];
    const t0 = process.hrtime.bigint();
    let pointInTime = new Date();
    let windowError: unknown;
    try {
      for (const p of prepared) {
        await dmsetup(['suspend', p.v.name], fail);
        suspended.push(p.v);
      }
      pointInTime = new Date();
      for (const p of prepared) {
        // non-persistent (N) snapshot, 4 KiB chunks
        await dmsetup(['create', p.snap, '--table', `0 ${p.sectors} snapshot ${p.real} ${p.cow} N 8`], fail);
        undo.push(() => dmsetup(['remove', '--retry', p.snap], fail));
        await dmsetup(['reload', p.v.name, '--table', `0 ${p.sectors} snapshot-origin ${p.real}`], fail);
        swapped.push(p);
      }
    } catch (err) {
      windowError = err;
    } finally {
      // Resume whatever was suspended, whatever failed: a suspended root would hang the node.
      for (const v of suspended) await dmsetup(['resume', v.name], fail).catch((err: Error) => { windowError ??= err; });
    }
    const freezeSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    // Teardown (last in, first out) of a swapped volume: its own table back first, then its
    // snapshot, store and "real" map go.
    for (const p of swapped) {
      undo.push(async () => {
        await dmsetup(['reload', p.v.name, '--table', tableText(p.v.segments)], fail);
        await dmsetup(['resume', p.v.name], fail);
      });
    }
    if (windowError) throw windowError;
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
