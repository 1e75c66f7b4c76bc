// The hand-over initramfs: the ramdisk's own initramfs, zero padding to a 4-byte boundary (where
// the kernel looks for the next archive), then a newc cpio with the one-shot job and the kernel
// for the way back. Written only to a RAM filesystem, mode 0600, and removed by the caller right
// after `kexec -l` has read it.
import { createReadStream, createWriteStream } from 'node:fs';
import { open, readFile, statfs } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { RefusedError } from '../errors.js';
import { newcArchive, type CpioEntry } from './cpio.js';
import { ONESHOT_PATH, RETURN_INITRD, RETURN_KERNEL, type OneshotJob } from './oneshot-file.js';
import type { ReturnKernel } from './return-kernel.js';

const RAM_FS = new Set([0x01021994 /* tmpfs */, 0x858458f6 /* ramfs */]);

/** The first of DIRS that is a tmpfs/ramfs (so nothing written there reaches a disk). */
export async function ramDir(dirs = ['/run', '/dev/shm']): Promise<string> {
  for (const d of dirs) {
    const s = await statfs(d).catch(() => undefined);
    if (s && RAM_FS.has(s.type)) return d;
  }
  throw new RefusedError(`no tmpfs at ${dirs.join(' or ')} to stage the ramdisk in (the token must not touch a disk)`);
}

export async function handoverEntries(job: OneshotJob, back: ReturnKernel | undefined): Promise<CpioEntry[]> {
  const entries: CpioEntry[] = [
    { name: 'etc/bmsnap', type: 'dir', mode: 0o700 },
    { name: ONESHOT_PATH, type: 'file', mode: 0o600, data: Buffer.from(JSON.stringify(job)) },
  ];
  if (back) {
    entries.push({ name: 'etc/bmsnap/return', type: 'dir', mode: 0o700 });
    entries.push({ name: RETURN_KERNEL, type: 'file', mode: 0o600, data: await readFile(back.kernel) });
    if (back.initrd) entries.push({ name: RETURN_INITRD, type: 'file', mode: 0o600, data: await readFile(back.initrd) });
  }
  return entries;
}

/** Writes RAMDISK + padding + the cpio of ENTRIES to OUT (created 0600, must not exist). */
export async function writeHandoverInitramfs(out: string, ramdisk: string, entries: CpioEntry[]): Promise<void> {
  await pipeline(createReadStream(ramdisk), createWriteStream(out, { flags: 'wx', mode: 0o600 }));
  const fh = await open(out, 'a');
  try {
    const { size } = await fh.stat();
    const parts = [Buffer.alloc((4 - (size % 4)) % 4), ...newcArchive(entries)];
    for (const p of parts) if (p.length) await fh.write(p);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
