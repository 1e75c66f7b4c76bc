// The self-contained `bmsnap` bundle (bundle/build.sh) for the tests: build it (or take it from
// the cache) and read what its payload holds.
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from './disks.js';

export const BUNDLE_BUILD = join(REPO_ROOT, 'bundle/build.sh');

export interface BundleBuild { exitCode: number; stderr: string; path: string; seconds: number }

/** bundle/build.sh --quiet ARGS (BMSNAP_BUNDLE_CACHE=cache if given); path '' on failure. */
export async function buildBundle(args: string[] = [], cache?: string): Promise<BundleBuild> {
  const t0 = Date.now();
  const r = await execa('bash', [BUNDLE_BUILD, '--quiet', ...args], {
    reject: false, stdin: 'ignore', env: { NODE_OPTIONS: '', ...(cache ? { BMSNAP_BUNDLE_CACHE: cache } : {}) },
  });
  return {
    exitCode: r.exitCode ?? -1, stderr: String(r.stderr),
    path: /^bundle (\S+)$/m.exec(String(r.stdout))?.[1] ?? '', seconds: (Date.now() - t0) / 1000,
  };
}

/** The stub's filled-in values (key, offset, need_kib, unpack). */
export async function stubValues(bundle: string): Promise<Record<string, string>> {
  const head = (await readFile(bundle)).subarray(0, 16384).toString('latin1');
  return Object.fromEntries([...head.matchAll(/^(key|offset|need_kib|unpack)=(\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

/** `tar -t` of the payload: its member names. */
export async function payloadNames(bundle: string): Promise<string[]> {
  const { offset, unpack } = await stubValues(bundle);
  const r = await execa('sh', ['-c', `tail -c +${offset} "$1" | ${unpack} -dc | tar -tf -`, 'x', bundle]);
  return String(r.stdout).split('\n').filter(Boolean);
}
