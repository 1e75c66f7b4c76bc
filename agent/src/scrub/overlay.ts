// Scrub without touching the node's disk: a device-mapper snapshot over the disk with its
// copy-on-write store in RAM (a sparse file in tmpfs on a loop device), one linear mapping per
// partition on top, each Linux root filesystem mounted read-write THERE and scrubbed, then
// unmounted; the caller images the overlay. The snapshot target never writes to its origin, so
// the disk stays byte-identical (the VM test proves it by hash). Needs root, dm-snapshot and loop
// (the ramdisk has both); the disk must not be mounted (offline capture).
import { execa } from 'execa';
import { mkdir, open, readFile, rm, rmdir, stat } from 'node:fs/promises';
import { freemem } from 'node:os';
import type { Logger } from 'pino';
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
const env = { ...process.env, DM_DISABLE_UDEV: '1' };   // no udev in the ramdisk: libdevmapper makes the nodes

async function run(cmd: string, args: string[]): Promise<string> {
  const r = await execa(cmd, args, { reject: false, env, stdin: 'ignore' });
  if (r.exitCode !== 0) throw new ScrubError(`${cmd} ${args.join(' ')}: ${(String(r.stderr).trim() || `exit ${r.exitCode}`).split('\n')[0]}`);
  return String(r.stdout).trim();
}

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
    await requireSnapshotTarget();
    // The snapshot target's origin must be a block device: a raw image file gets a read-only loop.
    let origin = device;
    if (!(await stat(device)).isBlockDevice()) {
      origin = await run('losetup', ['-r', '-f', '--show', device]);
      undo.push(() => run('losetup', ['-d', origin]));
    }
    await mkdir(work, { recursive: true });
    // Sparse: RAM is used only for what the scrub writes. Its cap is the tmpfs's.
    const fh = await open(cowFile, 'wx', 0o600);
    undo.push(() => rm(cowFile, { force: true }));
    await fh.truncate(Math.min(map.size, Math.max(256 * 2 ** 20, Math.floor(freemem() / 2)))).finally(() => fh.close());
    const cow = await run('losetup', ['-f', '--show', cowFile]);
    undo.push(() => run('losetup', ['-d', cow]));
    // non-persistent (N) snapshot, 4 KiB chunks
    await run('dmsetup', ['create', name, '--table', `0 ${map.size / SECTOR} snapshot ${origin} ${cow} N 8`]);
    undo.push(() => run('dmsetup', ['remove', '--retry', name]));
    const overlay = `/dev/mapper/${name}`;
    const base = undo.length;

    const result: ScrubResult = { partitions: {}, skipped: [] };
    for (const p of map.partitions) {
      if (p.fs !== 'ext4' && p.fs !== 'ext3' && p.fs !== 'ext2' && p.fs !== 'xfs') continue;
      const part = `${name}-p${p.index}`;
      await run('dmsetup', ['create', part, '--table', `0 ${p.size / SECTOR} linear ${overlay} ${p.start / SECTOR}`]);
      undo.push(() => run('dmsetup', ['remove', '--retry', part]));
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

/** dm-snapshot present (loaded on demand), or a clear error instead of dmsetup's. */
async function requireSnapshotTarget(): Promise<void> {
  await execa('modprobe', ['-q', 'dm_snapshot'], { reject: false, stdin: 'ignore' }).catch(() => undefined);
  const targets = await execa('dmsetup', ['targets'], { reject: false, env, stdin: 'ignore' }).catch(() => undefined);
  const misc = await readFile('/proc/misc', 'utf8').catch(() => '');
  if (!targets || targets.exitCode !== 0 || !/^snapshot\s/m.test(String(targets.stdout)) || !/device-mapper/.test(misc)) {
    throw new ScrubError('scrub needs device-mapper with the snapshot target (dm_snapshot), which this system lacks: run it in the bmsnap ramdisk or on a kernel with dm');
  }
}

function summary(r: Record<string, Removal>): Record<string, number> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v.removed.length + v.emptied.length]));
}
