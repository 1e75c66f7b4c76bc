// log.collect_system_logs: a gzipped tar (base64) of what helps debug a failed step. The
// conductor stores it under [agent]deploy_logs_local_path. No secrets: the kernel command line
// is included with token-like parameters masked.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import type { Extension } from './types.js';

const SECRET = /(token|password|secret)=\S*/gi;

export function logExtension(deps: { logFile?: string }): Extension {
  return {
    name: 'log',
    commands: {
      collect_system_logs: {
        async: false,
        async run() {
          const dir = await mkdtemp(join(tmpdir(), 'bmsnap-logs-'));
          try {
            const grab = async (name: string, cmd: string, args: string[]) => {
              const r = await execa(cmd, args, { reject: false, timeout: 10_000 });
              await writeFile(join(dir, name), `${r.stdout}\n${r.stderr}`.replace(SECRET, '$1=***'));
            };
            await grab('dmesg.txt', 'dmesg', []);
            await grab('lsblk.txt', 'lsblk', ['-O']);
            await grab('ip-addr.txt', 'ip', ['addr']);
            await grab('mounts.txt', 'cat', ['/proc/mounts']);
            await writeFile(join(dir, 'cmdline.txt'), (await readFile('/proc/cmdline', 'utf8').catch(() => '')).replace(SECRET, '$1=***'));
            if (deps.logFile) await writeFile(join(dir, 'bmsnap-agent.log'), (await readFile(deps.logFile, 'utf8').catch(() => '')).replace(SECRET, '$1=***'));
            const tar = await execa('tar', ['czf', '-', '-C', dir, '.'], { encoding: 'buffer' });
            return { system_logs: Buffer.from(tar.stdout).toString('base64') };
          } finally {
            await rm(dir, { recursive: true, force: true });
          }
        },
      },
    },
  };
}
