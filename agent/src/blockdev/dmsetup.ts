// dmsetup, run the way bmsnap needs it everywhere: without waiting for udev (the ramdisk has none,
// and on a node udev must not stall a suspended root: libdevmapper makes the /dev/mapper nodes
// itself), stdin closed, and a failure turned into the caller's error class with dmsetup's
// first line of complaint.
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';

export const DM_ENV = { ...process.env, DM_DISABLE_UDEV: '1' };

export type ErrorFactory = (message: string) => Error;

/** Runs CMD ARGS with DM_ENV; its trimmed stdout, or FAIL(first stderr line). */
export async function runTool(cmd: string, args: string[], fail: ErrorFactory): Promise<string> {
  const r = await execa(cmd, args, { reject: false, env: DM_ENV, stdin: 'ignore' });
  if (r.exitCode !== 0) throw fail(`${cmd} ${args.join(' ')}: ${(String(r.stderr).trim() || `exit ${r.exitCode ?? r.signal}`).split('\n')[0]}`);
  return String(r.stdout).trim();
}

export const dmsetup = (args: string[], fail: ErrorFactory) => runTool('dmsetup', args, fail);

/** dm-snapshot present (loaded on demand), or FAIL(WHAT + why not) instead of dmsetup's words. */
export async function requireSnapshotTarget(what: string, fail: ErrorFactory): Promise<void> {
  await execa('modprobe', ['-q', 'dm_snapshot'], { reject: false, stdin: 'ignore' }).catch(() => undefined);
  const targets = await execa('dmsetup', ['targets'], { reject: false, env: DM_ENV, stdin: 'ignore' }).catch(() => undefined);
  const misc = await readFile('/proc/misc', 'utf8').catch(() => '');
  if (!targets || targets.exitCode !== 0 || !/^snapshot\s/m.test(String(targets.stdout)) || !/device-mapper/.test(misc)) {
    throw fail(`${what} needs device-mapper with the snapshot target (dm_snapshot), which this system lacks`);
  }
}
