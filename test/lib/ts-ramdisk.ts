// "The ramdisk" of the Ironic e2e tests: the TypeScript agent (dist/) started as a local process
// with the kernel command line Ironic's bmsnap-fake boot interface wrote; FakeBootWatcher
// (ironic-stack.ts) calls the booter this returns and kills the agent when Ironic powers it off.
import type { Test } from 'tap';
import { execa, type ResultPromise } from 'execa';
import { createWriteStream, existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT, type TestDisk } from './disks.js';
import { CHILD_ENV, secs, tokenOf, type Boot, type FakeBootWatcher, type IronicStack } from './ironic-stack.js';
import { pickPortIn } from './ports.js';

export const TS_AGENT = join(REPO_ROOT, 'dist/agent/src/cli/main.js');

/** Ends the test file early unless it runs as root (for WHY) and the agent is built. */
export function requireRootAndAgent(t: Test, why: string): void {
  if (process.getuid?.() !== 0) {
    t.plan(0, `needs root (${why})`);
    process.exit(0);
  }
  if (!existsSync(TS_AGENT)) {
    t.fail(`${TS_AGENT} is missing: run npm run build`);
    process.exit(1);
  }
}

export interface Ramdisk extends Boot { port: number; log: string; proc: ResultPromise }

/** Agents listen on 127.0.0.1 ports from PORTS (recorded in TAKEN while they run) and log to LOGDIR. */
export function tsAgentBooter(o: { logDir: string; ports: [number, number]; taken: Set<number>; heartbeatSeconds?: number }) {
  return async (uuid: string, cmdline: string, content: string, i: number): Promise<Ramdisk> => {
    const port = await pickPortIn(o.ports[0], o.ports[1], o.taken);
    const log = join(o.logDir, `agent-${i}-${uuid}.log`);
    const out = createWriteStream(log);
    const proc = execa('node', [TS_AGENT, 'agent', '--cmdline', cmdline, '--listen', '127.0.0.1', '--advertise-host', '127.0.0.1',
      '--port', String(port), '--heartbeat-seconds', String(o.heartbeatSeconds ?? 3)], { reject: false, stdin: 'ignore', env: CHILD_ENV, all: true, buffer: false });
    proc.all?.pipe(out);
    const r: Ramdisk = { uuid, token: tokenOf(content), cmdline, port, log, proc, exited: false, done: proc, kill: (sig) => { proc.kill(sig); } };
    void proc.then(() => { r.exited = true; o.taken.delete(port); });
    return r;
  };
}

/**
 * The end of an Ironic e2e file: ramdisks killed, stack stopped, test disks removed, and WORK
 * removed unless KEEP (a failure, an unfinished run, BMSNAP_KEEP_STACK=1): then its path is printed.
 */
export async function finishStackRun(o: { harness: FakeBootWatcher<Boot>; stack: IronicStack; disks: TestDisk[]; work: string; keep: boolean; started: number }): Promise<void> {
  await o.harness.stop();
  const err = await o.stack.stop();
  if (err) console.error(`stack stop: ${err}`);
  for (const d of o.disks) await d.cleanup().catch(() => undefined);
  if (o.keep || process.env.BMSNAP_KEEP_STACK === '1') console.error(`# kept ${o.work}`);
  else await rm(o.work, { recursive: true, force: true });
  console.error(`# total ${secs(o.started)} s`);
}
