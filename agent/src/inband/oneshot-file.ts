// The one-shot job bmsnap hands from the running node to the ramdisk, inside an extra cpio
// appended to the ramdisk's initramfs (RAM only: never on a disk). Layout in the ramdisk:
//   /etc/bmsnap/oneshot.json     (0600) what to image, into which Glance image, with what token
//   /etc/bmsnap/return/kernel    the user's kernel for the way back (optional)
//   /etc/bmsnap/return/initrd    and its initrd (optional)
import { readFile, unlink } from 'node:fs/promises';
import type { GlanceConnection } from '../glance/client.js';
import type { RootDeviceHints } from '../ipa/root-device.js';
import { UsageError } from '../errors.js';

export const ONESHOT_PATH = 'etc/bmsnap/oneshot.json';
export const RETURN_KERNEL = 'etc/bmsnap/return/kernel';
export const RETURN_INITRD = 'etc/bmsnap/return/initrd';

export interface OneshotJob {
  glance: GlanceConnection;
  imageId: string;
  /** Root device hints for the disk, and its exact size in bytes. */
  disk: { hints: RootDeviceHints; bytes: number };
  format: 'qcow2' | 'raw';
  codec: 'zstd' | 'zlib' | 'none';
  /** The hidden image created beside imageId for its cluster index (absent: no index). */
  indexImageId?: string;
  /** A delta on this Glance image (checked before the kexec). */
  parent?: { imageId: string; orFull: boolean };
  /** The user's kernel command line for the way back; absent: reboot instead. */
  returnCmdline?: string;
}

/** Reads the job and removes the file at once (the token lives in memory only from then on). */
export async function takeOneshotJob(path: string): Promise<OneshotJob> {
  const text = await readFile(path, 'utf8').catch(() => { throw new UsageError(`cannot read ${path}`); });
  await unlink(path).catch(() => {});
  let job: OneshotJob;
  try { job = JSON.parse(text) as OneshotJob; } catch { throw new UsageError(`${path} is not JSON`); }
  if (!job?.glance?.endpoint || !job.imageId || !job.disk?.hints || !job.disk.bytes) throw new UsageError(`${path} lacks glance.endpoint, imageId or disk`);
  return job;
}
