// A copy-on-write store in RAM for a device-mapper snapshot: a sparse file in a tmpfs on a loop
// device. Sparse, so RAM is used only for the chunks actually copied; its cap is the tmpfs's.
import { open, rm, statfs } from 'node:fs/promises';
import { runTool, type ErrorFactory } from './dmsetup.js';

const TMPFS_MAGIC = 0x01021994;

export interface CowStore {
  /** The loop device to give the snapshot target. */
  device: string;
  dispose(): Promise<void>;
}

/** Is DIR on a tmpfs (RAM)? A COW file anywhere else could land on the disk being copied. */
export async function onTmpfs(dir: string): Promise<boolean> {
  return statfs(dir).then((s) => s.type === TMPFS_MAGIC, () => false);
}

/** A BYTES-sized sparse file FILE (created here, must not exist) on a loop device. */
export async function ramCowStore(file: string, bytes: number, fail: ErrorFactory): Promise<CowStore> {
  const fh = await open(file, 'wx', 0o600);
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
  try {
    const device = await runTool('losetup', ['-f', '--show', file], fail);
    return {
      device,
      async dispose() {
        await runTool('losetup', ['-d', device], fail).finally(() => rm(file, { force: true }));
      },
    };
  } catch (err) {
    await rm(file, { force: true });
    throw err;
  }
}
