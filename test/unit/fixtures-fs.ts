// Helpers for the filesystem probe tests: real images built with the real tools in a scratch
// directory, loop devices and mounts that are always undone, and the "zeroed copy" check (a copy
// of the image holding only the bytes the probe says are used, zeros elsewhere).
import { execa } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Test } from 'tap';
import { probeFilesystem } from '../../agent/src/map/filesystems/index.js';
import type { FsUsage } from '../../agent/src/map/filesystems/types.js';
import type { Extent } from '../../agent/src/map/extents.js';
import type { ByteReader } from '../../agent/src/source/byte-reader.js';
import { openSource } from '../../agent/src/source/open-source.js';

export const MiB = 1024 * 1024;
const TOOL_ENV = { LC_ALL: 'C', TZ: 'UTC', MTOOLS_SKIP_CHECK: '1' };

/** Runs a tool, throwing with its stderr on a non-zero exit; returns stdout. */
export async function sh(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await execa(cmd, args, { stdin: 'ignore', env: { ...TOOL_ENV, ...env } });
  return String(r.stdout);
}

export async function shStatus(cmd: string, args: string[]): Promise<{ exitCode: number; output: string }> {
  const r = await execa(cmd, args, { stdin: 'ignore', env: TOOL_ENV, reject: false, all: true });
  return { exitCode: r.exitCode ?? -1, output: String(r.all ?? '') };
}

/** A temp directory plus a stack of undo actions, all run (last first) in t.teardown. */
export class Scratch {
  private readonly undo: (() => Promise<unknown>)[] = [];
  private constructor(readonly dir: string) {}

  static async create(t: Test): Promise<Scratch> {
    const s = new Scratch(await mkdtemp(join(tmpdir(), 'bmsnap-fs-')));
    s.defer(() => rm(s.dir, { recursive: true, force: true }));
    t.teardown(() => s.cleanup());
    return s;
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  defer(fn: () => Promise<unknown>): void {
    this.undo.push(fn);
  }

  async cleanup(): Promise<void> {
    while (this.undo.length) {
      const fn = this.undo.pop()!;
      try {
        await fn();
      } catch {
        // keep undoing the rest
      }
    }
  }

  /**
   * Attaches FILE to a loop device. detach() is idempotent and also runs at cleanup, so a
   * device number reused by someone else later is never detached by mistake.
   */
  async loop(file: string, readOnly = false): Promise<{ dev: string; detach(): Promise<void> }> {
    const dev = (await sh('losetup', ['-f', '--show', ...(readOnly ? ['-r'] : []), file])).trim();
    let attached = true;
    const detach = async (): Promise<void> => {
      if (!attached) return;
      attached = false;
      await detachLoop(dev);
    };
    this.defer(detach);
    return { dev, detach };
  }

  /**
   * Loop-mounts FILE, runs FN on the mount point, then unmounts and detaches. Cleanup also
   * undoes both if FN throws or the test dies half way.
   */
  async withMount<T>(file: string, options: string, fn: (dir: string) => Promise<T>): Promise<T> {
    const readOnly = options.split(',').includes('ro');
    const loop = await this.loop(file, readOnly);
    const dir = await mkdtemp(join(this.dir, 'mnt-'));
    await sh('mount', ['-o', options, loop.dev, dir]);
    let mounted = true;
    const unmount = async (): Promise<void> => {
      if (!mounted) return;
      await sh('umount', [dir]);
      mounted = false;
    };
    this.defer(unmount);
    try {
      return await fn(dir);
    } finally {
      await unmount();
      await loop.detach();
    }
  }
}

async function detachLoop(dev: string): Promise<void> {
  // A just-unmounted loop can stay busy for a moment.
  for (let i = 0; i < 30; i++) {
    const r = await shStatus('losetup', ['-d', dev]);
    if (r.exitCode === 0 || /No such device|not a block device|failed to use device/i.test(r.output)) return;
    await sleep(100);
  }
}

/** Creates a file of SIZE bytes of non-zero garbage, standing in for a disk's old contents. */
export async function garbageFile(path: string, size: number): Promise<void> {
  const chunk = randomBytes(MiB);
  for (let i = 0; i < chunk.length; i++) if (chunk[i] === 0) chunk[i] = 0xa5;
  const fh = await open(path, 'w');
  try {
    for (let off = 0; off < size; off += chunk.length) {
      // vary each MiB a little so no two are identical
      chunk.writeUInt32LE(off / MiB, 0);
      await fh.write(chunk, 0, Math.min(chunk.length, size - off), off);
    }
  } finally {
    await fh.close();
  }
}

/** Writes files of random content under DIR; names may contain '/'. */
export async function writeRandomFiles(dir: string, files: Record<string, number>): Promise<void> {
  for (const [name, size] of Object.entries(files)) {
    const path = join(dir, name);
    await mkdir(join(path, '..'), { recursive: true });
    await writeFile(path, randomBytes(size));
  }
}

/** Relative path -> sha256 (files), "dir", or "link:<target>", for comparing two trees. */
export async function treeDigest(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        out[r] = 'dir';
        await walk(r);
      } else if (e.isSymbolicLink()) {
        out[r] = `link:${await readlink(join(root, r))}`;
      } else {
        out[r] = createHash('sha256').update(await readFile(join(root, r))).digest('hex');
      }
    }
  };
  await walk('');
  return out;
}

/** Runs the probes on an image file. */
export async function probeImage(path: string): Promise<FsUsage | null> {
  const src = await openSource(path);
  try {
    return await probeFilesystem(src);
  } finally {
    await src.close();
  }
}

/** Writes DST: same size as SRC, SRC's bytes inside USED, zeros (holes) elsewhere. */
export async function zeroedCopy(src: string, dst: string, used: readonly Extent[]): Promise<void> {
  const input = await open(src, 'r');
  const output = await open(dst, 'w');
  try {
    const { size } = await input.stat();
    await output.truncate(size);
    const buf = Buffer.alloc(4 * MiB);
    for (const e of used) {
      for (let off = e.offset; off < e.offset + e.length; off += buf.length) {
        const n = Math.min(buf.length, e.offset + e.length - off);
        const { bytesRead } = await input.read(buf, 0, n, off);
        if (bytesRead !== n) throw new Error(`short read at ${off}`);
        await output.write(buf, 0, n, off);
      }
    }
  } finally {
    await input.close();
    await output.close();
  }
}

/** A reader over BASE with some bytes replaced: corrupt metadata without touching the file. */
export function patchedReader(base: ByteReader, patches: { offset: number; bytes: Uint8Array }[]): ByteReader {
  return {
    size: base.size,
    async readExact(buf, position) {
      await base.readExact(buf, position);
      for (const p of patches) {
        const from = Math.max(p.offset, position);
        const to = Math.min(p.offset + p.bytes.length, position + buf.length);
        for (let i = from; i < to; i++) buf[i - position] = p.bytes[i - p.offset]!;
      }
    },
  };
}

export function u32le(n: number): Uint8Array {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

export function u32be(n: number): Uint8Array {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** Checks the FsUsage invariants every probe must keep. */
export function assertWellFormed(t: Test, usage: FsUsage, partitionSize: number): void {
  t.ok(usage.used.length > 0, 'map is not empty');
  let prevEnd = -1;
  for (const e of usage.used) {
    if (!(e.length > 0 && e.offset > prevEnd && e.offset + e.length <= partitionSize)) {
      t.fail(`extent ${e.offset}+${e.length} breaks the normalized-inside-partition rule`);
      return;
    }
    prevEnd = e.offset + e.length;
  }
  t.pass('extents sorted, disjoint, non-adjacent, inside the partition');
}
