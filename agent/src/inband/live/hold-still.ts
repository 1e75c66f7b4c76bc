// Filesystems mounted read-write straight from a partition of the disk (/boot, the ESP) cannot
// get a snapshot beneath them, so they are held still for the whole capture: frozen (writers
// wait, nothing fails), or - for filesystems without freeze support, such as vfat - remounted
// read-only. If neither works the capture is refused before anything is copied.
import type { Logger } from 'pino';
import { runTool } from '../../blockdev/dmsetup.js';
import { RefusedError } from '../../errors.js';
import type { PlainMount } from './disk-mounts.js';

export interface Held {
  mountpoint: string;
  how: 'frozen' | 'read-only';
}

export interface HeldSet {
  held: Held[];
  /** Thaws / remounts read-write again; returns what could not be undone (for the user to fix). */
  release(): Promise<string[]>;
}

const plainError = (m: string) => new Error(m);

async function undo(h: Held): Promise<void> {
  if (h.how === 'frozen') await runTool('fsfreeze', ['--unfreeze', h.mountpoint], plainError);
  else await runTool('mount', ['-o', 'remount,rw', h.mountpoint], plainError);
}

export async function holdStill(mounts: readonly PlainMount[], log?: Logger): Promise<HeldSet> {
  const held: Held[] = [];
  const release = async () => {
    const failed: string[] = [];
    for (const h of held.splice(0).reverse()) {
      await undo(h).catch((err: Error) => {
        log?.error({ mountpoint: h.mountpoint, error: err.message }, 'could not release a held filesystem');
        failed.push(`${h.mountpoint} is still ${h.how} (${h.how === 'frozen' ? `fsfreeze --unfreeze ${h.mountpoint}` : `mount -o remount,rw ${h.mountpoint}`})`);
      });
    }
    return failed;
  };
  for (const m of mounts) {
    try {
      await runTool('fsfreeze', ['--freeze', m.mountpoint], plainError);
      held.push({ mountpoint: m.mountpoint, how: 'frozen' });
    } catch (freezeErr) {
      try {
        await runTool('mount', ['-o', 'remount,ro', m.mountpoint], plainError);
        held.push({ mountpoint: m.mountpoint, how: 'read-only' });
      } catch (roErr) {
        await release();
        throw new RefusedError(`${m.mountpoint} (${m.fstype} on ${m.device}) is mounted read-write from a plain partition and can be neither frozen (${lastWords(freezeErr)}) nor remounted read-only (${lastWords(roErr)}) for the capture; use --mode kexec`);
      }
    }
    log?.info({ mountpoint: m.mountpoint, how: held.at(-1)!.how }, 'held still for the capture (plain partition)');
  }
  return { held, release };
}

const lastWords = (err: unknown) => (err as Error).message.split(': ').slice(-1)[0]!.toLowerCase();
