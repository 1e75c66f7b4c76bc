// Runs the built `bmsnap` CLI (dist/agent/src/cli/main.js) as a child process, the way a user
// does: no stdin, tap's loader hooks kept out of the child (NODE_OPTIONS emptied).
import { execa } from 'execa';
import { join } from 'node:path';
import { REPO_ROOT } from './disks.js';

export const CLI = join(REPO_ROOT, 'dist/agent/src/cli/main.js');

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

export async function bmsnap(args: string[]): Promise<CliResult> {
  const started = Date.now();
  const r = await execa('node', [CLI, ...args], { reject: false, stdin: 'ignore', timeout: 600_000, env: { NODE_OPTIONS: '' } });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), seconds: (Date.now() - started) / 1000 };
}
