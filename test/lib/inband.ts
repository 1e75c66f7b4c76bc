// What the in-band VM tests (test/e2e/inband-*.test.ts) share: booting the image they made in a
// fresh VM, and running the CLI as an unprivileged user.
import { execa } from 'execa';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Vm } from './vm.js';

/**
 * Boots raw disk image RAW in a fresh VM (no network) with a job disk that prints the file the
 * guest jobs write before snapshotting (/opt/app/before-snapshot); the VM goes into VMS (the
 * caller's teardown stops it). Returns the marker the image's OS printed, that file's content
 * and the VM's serial log.
 */
export async function bootRestored(o: { work: string; raw: string; name: string; vms: Vm[] }): Promise<{ marker: string; file: string; serialLog: string }> {
  const vdir = join(o.work, 'verify');
  await mkdir(vdir);
  await writeFile(join(vdir, 'job.sh'), 'echo "BMSNAP-VERIFY file=$(/bin/busybox cat /opt/app/before-snapshot)"\n');
  const vdisk = join(o.work, 'verify.img');
  await execa('mkfs.ext4', ['-q', '-F', '-d', vdir, vdisk, '8M']);
  const serialLog = join(o.work, 'restored.serial.log');
  const vm = new Vm({ name: o.name, serialLog, noNetwork: true, disks: [{ file: o.raw, format: 'raw' }, { file: vdisk, format: 'raw' }] });
  o.vms.push(vm);
  const m = await vm.waitLine(/BMSNAP-MARKER (\S+) [0-9a-f]{64} machine-id=/, 240);
  const f = await vm.waitLine(/BMSNAP-VERIFY file=(\S*)/, 60);
  await vm.done;
  return { marker: m.match[1]!, file: f.match[1]!, serialLog };
}

const PLAIN_ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

/** node CLI ARGS as user nobody (65534), with a minimal environment. */
export function runAsNobody(cli: string, args: string[]) {
  // (env -u NODE_OPTIONS: tap's process-info hook, injected into every child, cannot write as nobody)
  return execa('env', ['-u', 'NODE_OPTIONS', 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, cli, ...args],
    { reject: false, stdin: 'ignore', extendEnv: false, env: PLAIN_ENV });
}

/** node CLI ARGS as this user, with a minimal environment. */
export function runPlain(cli: string, args: string[]) {
  return execa(process.execPath, [cli, ...args], { reject: false, stdin: 'ignore', extendEnv: false, env: PLAIN_ENV });
}
