// Scrub without touching the node's disk: a device-mapper snapshot over the disk with its
// copy-on-write store in RAM (a sparse file in tmpfs on a loop device), one linear mapping per
// partition on top, each Linux root filesystem mounted read-write THERE and scrubbed, then
// unmounted; the caller images the overlay. The snapshot target never writes to its origin, so
// the disk stays byte-identical (the VM test proves it by hash). Needs root, dm-snapshot and loop
// (the ramdisk has both); the disk must not be mounted (offline capture).
import { mkdir, rmdir, stat } from 'node:fs/promises';
import { freemem } from 'node:os';
import type { Logger } from 'pino';
import { dmsetup, requireSnapshotTarget, runTool } from '../blockdev/dmsetup.js';
import { ramCowStore } from '../blockdev/ram-cow.js';
import { BmsnapError } from '../errors.js';
import type { DiskMap } from '../map/build-map.js';
import { looksLikeLinuxRoot, scrubTree, type Removal, type ScrubOperation } from './operations.js';

/** The copy-on-write overlay could not be set up, mounted or scrubbed. */
export class ScrubError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_SCRUB');
  }
}

export interface ScrubOptions {
  operations: ScrubOperation[];
  paths?: string[];
  log?: Logger;
  /** Where the copy-on-write file and mount points go (a tmpfs). */
  workDir?: string;
}

export interface ScrubResult {
  /** Per scrubbed partition (by number): what each operation did. */
  partitions: Record<number, Record<string, Removal>>;
  /** Filesystems mounted but left alone (not a Linux root). */
  skipped: number[];
}

const SECTOR = 512;
const fail = (m: string) => new ScrubError(m);
const run = (cmd: string, args: string[]) => runTool(cmd, args, fail);

/**
 * Runs FN with the path of a scrubbed copy-on-write view of DEVICE (whose used-block map is MAP),
 * and tears everything down afterwards, whatever happens.
 */
export async function withScrubbedOverlay<T>(device: string, map: DiskMap, opts: ScrubOptions, fn: (overlay: string, result: ScrubResult) => Promise<T>): Promise<T> {
  const name = `bmsnap-scrub-${process.pid}`;
  const work = opts.workDir ?? '/run/bmsnap';
  const cowFile = `${work}/${name}.cow`;
  const undo: (() => Promise<unknown>)[] = [];
  try {
    await requireSnapshotTarget('scrub', (m) => new ScrubError(`${m}: run it in the bmsnap ramdisk or on a kernel with dm`));
    // The snapshot target's origin must be a block device: a raw image file gets a read-only loop.
    let origin = device;
    if (!(await stat(device)).isBlockDevice()) {
      origin = await run('losetup', ['-r', '-f', '--show', device]);
      undo.push(() => run('losetup', ['-d', origin]));
    }
    await mkdir(work, { recursive: true });
    const cow = await ramCowStore(cowFile, Math.min(map.size, Math.max(256 * 2 ** 20, Math.floor(freemem() / 2))), fail);
    undo.push(() => cow.dispose());
    // non-persistent (N) snapshot, 4 KiB chunks
    await dmsetup(['create', name, '--table', `0 ${map.size / SECTOR} snapshot ${origin} ${cow.device} N 8`], fail);
    undo.push(() => dmsetup(['remove', '--retry', name], fail));
    const overlay = `/dev/mapper/${name}`;
    const base = undo.length;

    const result: ScrubResult = { partitions: {}, skipped: [] };
    for (const p of map.partitions) {
      if (p.fs !== 'ext4' && p.fs !== 'ext3' && p.fs !== 'ext2' && p.fs !== 'xfs') continue;
      const part = `${name}-p${p.index}`;
      await dmsetup(['create', part, '--table', `0 ${p.size / SECTOR} linear ${overlay} ${p.start / SECTOR}`], fail);
      undo.push(() => dmsetup(['remove', '--retry', part], fail));
      const mnt = `${work}/${part}`;
      await mkdir(mnt, { recursive: true });
      await run('mount', ['-t', p.fs, '-o', p.fs === 'xfs' ? 'rw,nouuid' : 'rw', `/dev/mapper/${part}`, mnt]);
      try {
        if (await looksLikeLinuxRoot(mnt)) {
          result.partitions[p.index] = await scrubTree(mnt, opts.operations, opts.paths ?? []);
          opts.log?.info({ partition: p.index, fs: p.fs, scrubbed: summary(result.partitions[p.index]!) }, 'scrubbed (on the copy-on-write overlay)');
        } else {
          result.skipped.push(p.index);
        }
      } finally {
        await run('umount', [mnt]);
        await rmdir(mnt).catch(() => undefined);
      }
    }
    if (!Object.keys(result.partitions).length) {
      throw new ScrubError(`scrub: no Linux root filesystem found on ${device} (looked at ${map.partitions.filter((p) => p.fs).map((p) => `${p.index}:${p.fs}`).join(', ') || 'no filesystems'})`);
    }
    // Drop the per-partition mappings (the undo steps pushed since the overlay) before imaging:
    // the overlay alone is the source.
    while (undo.length > base) await undo.pop()!();
    return await fn(overlay, result);
  } finally {
    for (const u of undo.reverse()) await u().catch((err: unknown) => opts.log?.warn({ error: (err as Error).message }, 'scrub overlay teardown'));
  }
}

function summary(r: Record<string, Removal>): Record<string, number> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v.removed.length + v.emptied.length]));
}
