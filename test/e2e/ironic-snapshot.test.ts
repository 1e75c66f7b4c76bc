// End-to-end of the `snapshot` service step (issue 4) against a REAL Ironic 29 conductor and a
// REAL Glance 30 (test/stack/, Debian trixie chroot on 127.0.0.1), with no mocks of either:
//   - ironic-step-py is loaded into Ironic as a plugin (BMSNAP_IRONIC_PLUGIN): hardware type
//     bmsnap-fake-hardware, deploy interface bmsnap, boot interface bmsnap-fake;
//   - bmsnap-fake "boots the ramdisk" by writing the kernel parameters (ipa-api-url, a
//     pre-generated ipa-agent-token, ipa-node-uuid) to [bmsnap]fake_boot_dir/<uuid>.cmdline; the
//     harness below watches that dir and starts the TypeScript agent (dist/) with that command
//     line, and stops it when the file goes away (clean_up_ramdisk = the ramdisk powered off);
//   - [api]restrict_lookup and [agent]require_tls keep their defaults (True): the agent skips
//     lookup (token + uuid on the command line) and heartbeats with auto-TLS.
// Cases: success on the GPT test disk (image verified byte for byte after conversion), the agent
// killed mid-copy, `baremetal node abort` during service wait, Glance down before the step.
// Needs root (chroot, mount namespaces, loop devices for the test disk). BMSNAP_KEEP_STACK=1
// keeps the stack dir.
import t, { type Test } from 'tap';
import { execa, type ResultPromise } from 'execa';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';

import { join } from 'node:path';
import { REPO_ROOT, buildDisk, run, type TestDisk } from '../lib/disks.js';
import { comparePartitionTables, convertToRaw, digestAll, hashFile, qemuImgCheck, qemuImgInfo, sha256File } from '../lib/verify.js';
import { pickPortIn } from '../lib/ports.js';

const STACK = join(REPO_ROOT, 'test/stack/openstack-stack.sh');
const PLUGIN = join(REPO_ROOT, 'ironic-step-py');
const TS_AGENT = join(REPO_ROOT, 'dist/agent/src/cli/main.js');
const CHILD_ENV = { NODE_OPTIONS: '' };   // keep tap's loader hooks out of children
const CALLBACK_TIMEOUT = 20;               // [conductor]service_callback_timeout for this stack

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root (chroot, unshare --mount, loop devices)');
  process.exit(0);
}
if (!existsSync(TS_AGENT)) {
  t.fail(`${TS_AGENT} is missing: run npm run build`);
  process.exit(1);
}

// ------------------------------------------------------------------------------------------------
// helpers

const taken = new Set<number>();
const pickPort = (lo: number, hi: number) => pickPortIn(lo, hi, taken);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const secs = (since: number) => Math.round((Date.now() - since) / 100) / 10;

interface Stack { dir: string; ironic: string; glance: string }

async function stackCmd(args: string[], env: Record<string, string> = {}) {
  return execa('bash', [STACK, ...args], { reject: false, stdin: 'ignore', timeout: 900_000, env: { ...CHILD_ENV, ...env } });
}

async function baremetal(stack: Stack, args: string[], opts: { json?: boolean; reject?: boolean } = {}) {
  const r = await execa('bash', [STACK, 'run', stack.dir, 'openstack', 'baremetal', ...args, ...(opts.json ? ['-f', 'json'] : [])],
    { reject: false, stdin: 'ignore', timeout: 300_000, env: CHILD_ENV });
  if (opts.reject !== false && r.exitCode !== 0) throw new Error(`openstack baremetal ${args.join(' ')}: rc ${r.exitCode}\n${r.stderr}`);
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), json: opts.json && r.exitCode === 0 ? JSON.parse(String(r.stdout)) : undefined };
}

async function getNode(stack: Stack, ident: string): Promise<any> {
  const res = await fetch(`${stack.ironic}/v1/nodes/${ident}`, { headers: { 'X-OpenStack-Ironic-API-Version': '1.95' } });
  if (res.status !== 200) throw new Error(`GET node ${ident}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Waits until the node is in one of WANT and not reserved (the conductor is done with it). */
async function waitState(stack: Stack, ident: string, want: string[], timeoutS: number): Promise<any> {
  const deadline = Date.now() + timeoutS * 1000;
  let n: any;
  while (Date.now() < deadline) {
    n = await getNode(stack, ident);
    if (want.includes(n.provision_state) && !n.reservation) return n;
    await sleep(500);
  }
  throw new Error(`node ${ident} not in ${want.join('|')} after ${timeoutS}s: ${n?.provision_state} (${n?.last_error})`);
}

async function waitFor<T>(what: string, timeoutS: number, fn: () => Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutS}s waiting for ${what}`);
    await sleep(300);
  }
}

async function glanceImages(stack: Stack, name: string): Promise<any[]> {
  const res = await fetch(`${stack.glance}/v2/images?name=${encodeURIComponent(name)}`);
  return ((await res.json()) as { images: any[] }).images;
}

/** Enrolls a node with everything given at create (no PATCH on trixie's 29.0.5), manage + adopt. */
async function activeNode(stack: Stack, name: string): Promise<string> {
  const created = await baremetal(stack, ['node', 'create', '--driver', 'bmsnap-fake-hardware', '--name', name,
    '--deploy-interface', 'bmsnap', '--boot-interface', 'bmsnap-fake'], { json: true });
  await baremetal(stack, ['node', 'manage', name, '--wait', '60']);
  await baremetal(stack, ['node', 'adopt', name, '--wait', '60']);
  return created.json.uuid as string;
}

const snapshotSteps = (imageName: string, disk: string) =>
  JSON.stringify([{ interface: 'deploy', step: 'snapshot', args: { image_name: imageName, root_device_hints: { name: disk } } }]);

// ------------------------------------------------------------------------------------------------
// "The ramdisk": watches fake_boot_dir; a new <uuid>.cmdline starts an agent, its removal stops it.

interface Ramdisk { uuid: string; token: string; cmdline: string; port: number; log: string; proc: ResultPromise; exited: boolean; killedByHarness: boolean }

class RamdiskHarness {
  readonly boots: Ramdisk[] = [];
  private running = new Map<string, Ramdisk>();
  private seen = new Map<string, string>();   // uuid -> cmdline content last started
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private n = 0;

  constructor(private readonly bootDir: string, private readonly workDir: string, private readonly logDir: string) {}

  start(): void { this.timer = setInterval(() => { void this.scan(); }, 200); }

  private async scan(): Promise<void> {
    if (this.stopped) return;
    const files = (await readdir(this.bootDir).catch(() => [] as string[])).filter((f) => f.endsWith('.cmdline'));
    const present = new Set(files.map((f) => f.slice(0, -'.cmdline'.length)));
    for (const [uuid, r] of this.running) {
      if (!present.has(uuid)) { this.kill(r, 'SIGTERM'); this.running.delete(uuid); this.seen.delete(uuid); }
    }
    for (const uuid of present) {
      const content = await readFile(join(this.bootDir, `${uuid}.cmdline`), 'utf8').catch(() => '');
      if (!content || this.seen.get(uuid) === content) continue;
      this.seen.set(uuid, content);
      const old = this.running.get(uuid);
      if (old) this.kill(old, 'SIGTERM');
      await this.boot(uuid, content);
    }
  }

  private async boot(uuid: string, content: string): Promise<void> {
    const i = ++this.n;
    const cmdline = join(this.workDir, `${uuid}.${i}.cmdline`);   // the original vanishes at tear-down
    await writeFile(cmdline, content, { mode: 0o600 });
    const token = /(?:^|\s)ipa-agent-token=(\S+)/.exec(content)?.[1] ?? '';
    const port = await pickPort(19600, 19699);
    const log = join(this.logDir, `agent-${i}-${uuid}.log`);
    const out = createWriteStream(log);
    const proc = execa('node', [TS_AGENT, 'agent', '--cmdline', cmdline, '--listen', '127.0.0.1', '--advertise-host', '127.0.0.1',
      '--port', String(port), '--heartbeat-seconds', '3'], { reject: false, stdin: 'ignore', env: CHILD_ENV, all: true, buffer: false });
    proc.all?.pipe(out);
    const r: Ramdisk = { uuid, token, cmdline, port, log, proc, exited: false, killedByHarness: false };
    void proc.then(() => { r.exited = true; taken.delete(port); });
    this.boots.push(r);
    this.running.set(uuid, r);
  }

  kill(r: Ramdisk, signal: NodeJS.Signals = 'SIGKILL'): void {
    if (r.exited) return;
    r.killedByHarness = true;
    r.proc.kill(signal);
  }

  async waitBoot(uuid: string, after: number, timeoutS = 60): Promise<Ramdisk> {
    return waitFor(`the ramdisk of ${uuid} to boot`, timeoutS, async () => this.boots.slice(after).find((b) => b.uuid === uuid));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    for (const r of this.boots) this.kill(r, 'SIGKILL');
    await Promise.all(this.boots.map((r) => r.proc.catch(() => undefined)));
  }
}

// ------------------------------------------------------------------------------------------------

const started = Date.now();
let completed = false;
const work = await mkdtemp(join(tmpdir(), 'bmsnap-ironic-e2e-'));   // not makeTempDir: kept on failure
t.comment(`work dir ${work}`);
const dir = join(work, 'stack');
const extra = join(work, 'ironic-extra.conf');
await writeFile(extra, [
  '[bmsnap]', 'fake_boot_dir = /stack/fakeboot', '',
  '[conductor]', `service_callback_timeout = ${CALLBACK_TIMEOUT}`, '',
].join('\n'));
const ironicPort = await pickPort(16360, 16384);   // not the smoke test's 16385-16399
const glancePort = await pickPort(19460, 19479);   // not the smoke test's 19480-19499
const env = {
  BMSNAP_IRONIC_PORT: String(ironicPort), BMSNAP_GLANCE_PORT: String(glancePort),
  BMSNAP_IRONIC_PLUGIN: PLUGIN,
  BMSNAP_IRONIC_HARDWARE_TYPES: 'fake-hardware,bmsnap-fake-hardware',
  BMSNAP_IRONIC_DEPLOY_INTERFACES: 'fake,direct,bmsnap',
  BMSNAP_IRONIC_BOOT_INTERFACES: 'fake,bmsnap-fake',
  BMSNAP_IRONIC_CONF_EXTRA: extra,
};
const stack: Stack = { dir, ironic: `http://127.0.0.1:${ironicPort}`, glance: `http://127.0.0.1:${glancePort}` };
const bootDir = join(dir, 'fakeboot');
await mkdir(bootDir, { recursive: true });
await mkdir(join(work, 'cmdlines'), { recursive: true });
await mkdir(join(dir, 'log'), { recursive: true });
const harness = new RamdiskHarness(bootDir, join(work, 'cmdlines'), join(dir, 'log'));
const disks: TestDisk[] = [];

t.teardown(async () => {
  await harness.stop();
  const r = await stackCmd(['stop', dir]);
  if (r.exitCode !== 0) console.error(`stack stop: rc ${r.exitCode}\n${r.stdout}\n${r.stderr}`);
  for (const d of disks) await d.cleanup().catch(() => undefined);
  if (process.env.BMSNAP_KEEP_STACK === '1' || !t.passing() || !completed) console.error(`# kept ${work}`);
  else await rm(work, { recursive: true, force: true });
  console.error(`# total ${secs(started)} s`);
});

// Everything runs in subtests: the root test ends (and runs its teardown) once it has nothing queued.
let stackUp = false;
await t.test('stack with the bmsnap plugin', async (t) => {
  const up = await stackCmd(['start', dir], env);
  if (up.exitCode !== 0) {
    t.fail('stack start', { stdout: String(up.stdout), stderr: String(up.stderr) });
    return;
  }
  t.pass(`stack up after ${secs(started)} s`);
  stackUp = true;
  harness.start();
  const drv = await baremetal(stack, ['driver', 'show', 'bmsnap-fake-hardware'], { json: true });
  t.ok(drv.json.enabled_deploy_interfaces.includes('bmsnap'), 'bmsnap deploy interface enabled', { got: drv.json.enabled_deploy_interfaces });
  t.ok(drv.json.enabled_boot_interfaces.includes('bmsnap-fake'), 'bmsnap-fake boot interface enabled', { got: drv.json.enabled_boot_interfaces });
});
if (!stackUp) process.exitCode = 1;

/** A disk whose copy takes some seconds: GPT, one partition of incompressible bytes. */
async function bigDisk(): Promise<string> {
  const path = join(work, 'big.raw');
  await run('truncate', ['-s', '1G', path]);
  await run('sgdisk', ['-n1:2048:+700M', '-t1:8300', path]);
  await run('bash', ['-c', `openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:bmsnap </dev/zero 2>/dev/null | head -c ${700 * 2 ** 20} | dd of=${path} bs=4M seek=${2048 * 512} oflag=seek_bytes conv=notrunc status=none`]);
  return path;
}

// ------------------------------------------------------------------------------------------------
// 1. Success on the GPT test disk.

if (stackUp) await t.test('snapshot of the GPT disk into Glance', async (t) => {
  const t0 = Date.now();
  const disk = await buildDisk('gpt', work);
  disks.push(disk);
  const srcSha = await sha256File(disk.path);
  const uuid = await activeNode(stack, 'e2e-ok');
  t.equal((await getNode(stack, uuid)).provision_state, 'active', 'node adopted: active (enroll -> manage -> adopt)');

  const nBoots = harness.boots.length;
  const svc = Date.now();
  await baremetal(stack, ['node', 'service', uuid, '--service-steps', snapshotSteps('e2e-snap', disk.path)]);
  const ramdisk = await harness.waitBoot(uuid, nBoots);
  t.ok(ramdisk.token.length >= 32, 'the ramdisk command line carries a pre-generated agent token');
  const n = await waitState(stack, uuid, ['active', 'service failed'], 300);
  t.comment(`service -> ${n.provision_state} in ${secs(svc)} s`);
  t.equal(n.provision_state, 'active', 'node back to active');
  t.equal(n.last_error, null, 'no last_error');
  t.equal(n.maintenance, false, 'not in maintenance');
  const info = n.driver_internal_info.bmsnap_snapshot;
  t.match(info, { image_id: String, state: 'active', image_name: 'e2e-snap' }, 'driver_internal_info.bmsnap_snapshot');

  const res = await fetch(`${stack.glance}/v2/images/${info.image_id}`);
  const img: any = await res.json();
  t.equal(img.status, 'active', 'Glance image active');
  t.equal(img.name, 'e2e-snap', 'image name as asked');
  t.equal(img.disk_format, 'qcow2', 'disk_format qcow2 (default)');
  t.equal(img.bmsnap_node_uuid, uuid, 'image tagged with the node');
  t.equal(img.size, info.size, 'Glance size = what the agent reported');
  t.equal(img.os_hash_value, info.os_hash_value, 'Glance sha512 = what the agent reported');

  const qcow = join(work, 'e2e-snap.qcow2');
  const dl = await fetch(`${stack.glance}/v2/images/${info.image_id}/file`);
  t.equal(dl.status, 200, 'download');
  await writeFile(qcow, Buffer.from(await dl.arrayBuffer()));
  t.equal(await hashFile(qcow, 'md5'), img.checksum, 'downloaded md5 = Glance checksum');
  t.equal(await hashFile(qcow, 'sha512'), img.os_hash_value, 'downloaded sha512 = Glance os_hash_value');
  const check = await qemuImgCheck(qcow);
  t.ok(check.clean, 'qemu-img check clean', { report: check.report, stderr: check.stderr });
  t.equal((await qemuImgInfo(qcow))['virtual-size'], disk.size, 'virtual size = disk size');
  const back = join(work, 'e2e-snap.raw');
  await convertToRaw(qcow, back);
  t.same(await comparePartitionTables(disk.path, back), [], 'partition tables identical');
  const [src, out] = [await digestAll(disk.path), await digestAll(back)];
  t.same([...out.keys()], [...src.keys()], 'same filesystems');
  for (const [i, d] of src) t.equal(out.get(i)?.digest, d.digest, `partition ${i} (${d.fs}): tree digest identical`);
  t.equal(await sha256File(disk.path), srcSha, 'source disk unchanged');
  await rm(back, { force: true });

  // The agent token: nowhere in the API, the services' logs or the agent's output.
  await waitFor('the ramdisk to be powered off', 30, async () => ramdisk.exited);
  const token = ramdisk.token;
  const show = await baremetal(stack, ['node', 'show', uuid], { json: true });
  t.notOk(show.stdout.includes(token), 'token not in `baremetal node show -f json`');
  t.equal(show.json.driver_internal_info.agent_secret_token, undefined, 'token wiped from the node after servicing');
  for (const f of await readdir(join(dir, 'log'))) {
    const text = await readFile(join(dir, 'log', f), 'utf8');
    t.notOk(text.includes(token), `token not in log/${f}`);
  }
  t.comment(`success case: ${secs(t0)} s`);
});

// ------------------------------------------------------------------------------------------------
// Failure cases share a disk that takes a while to copy.

let big = '';
let bigSha = '';

/** Starts a snapshot of the big disk; resolves when the agent is uploading (image "saving"). */
async function startBigSnapshot(name: string): Promise<{ uuid: string; ramdisk: Ramdisk; imageId: string }> {
  if (!big) { big = await bigDisk(); bigSha = await sha256File(big); }
  const uuid = await activeNode(stack, name);
  const nBoots = harness.boots.length;
  await baremetal(stack, ['node', 'service', uuid, '--service-steps', snapshotSteps(name, big)]);
  const ramdisk = await harness.waitBoot(uuid, nBoots);
  const imageId = await waitFor(`image ${name} saving`, 120, async () => {
    const imgs = await glanceImages(stack, name);
    return imgs.find((i) => i.status === 'saving')?.id as string | undefined;
  });
  return { uuid, ramdisk, imageId };
}

if (stackUp) await t.test('agent killed mid-copy', async (t) => {
  const t0 = Date.now();
  const { uuid, ramdisk, imageId } = await startBigSnapshot('e2e-kill');
  harness.kill(ramdisk, 'SIGKILL');
  t.pass(`agent killed while image ${imageId} was saving`);
  const n = await waitState(stack, uuid, ['service failed', 'active'], CALLBACK_TIMEOUT + 90);
  t.comment(`last_error: ${n.last_error}`);
  t.equal(n.provision_state, 'service failed', 'service failed');
  t.match(n.last_error, /Timeout reached while servicing the node.*snapshot/, 'last_error: servicing timeout on the snapshot step', { last_error: n.last_error });
  t.equal(n.maintenance, true, 'maintenance set by Ironic (failure during a step)');
  t.equal(n.driver_internal_info.bmsnap_snapshot?.state, 'deleted', 'bmsnap_snapshot.state deleted');
  t.same(await glanceImages(stack, 'e2e-kill'), [], 'no image left in Glance');
  t.equal(await sha256File(big), bigSha, 'source disk unchanged');
  t.comment(`kill case: ${secs(t0)} s`);
});

if (stackUp) await t.test('baremetal node abort during service wait', async (t) => {
  const t0 = Date.now();
  const { uuid, ramdisk } = await startBigSnapshot('e2e-abort');
  const ab = await baremetal(stack, ['node', 'abort', uuid], { reject: false });
  t.equal(ab.exitCode, 0, 'abort accepted in service wait', { stderr: ab.stderr });
  // Ironic 29 moves service wait -> service failed without tear_down_service; the plugin's
  // periodic task deletes the image and sets last_error.
  const n = await waitFor('the aborted snapshot to be cleaned up', 90, async () => {
    const x = await getNode(stack, uuid);
    return x.provision_state === 'service failed' && x.last_error && !x.reservation ? x : undefined;
  });
  t.comment(`last_error: ${n.last_error}`);
  t.match(n.last_error, /^Snapshot aborted: its image \S+ was deleted$/, 'last_error says the snapshot was aborted', { last_error: n.last_error });
  t.equal(n.driver_internal_info.bmsnap_snapshot?.state, 'deleted', 'bmsnap_snapshot.state deleted');
  t.same(await glanceImages(stack, 'e2e-abort'), [], 'no image left in Glance');
  // The agent is still "on" (29 does not tear down on abort); its upload fails against the
  // deleted image. Servicing again with a no-op step brings the node back.
  harness.kill(ramdisk, 'SIGKILL');
  await baremetal(stack, ['node', 'service', uuid, '--service-steps', '[{"interface":"power","step":"power_on"}]']);
  const back = await waitState(stack, uuid, ['active', 'service failed'], 120);
  t.equal(back.provision_state, 'active', 'a no-op service run returns the node to active');
  t.comment(`abort case: ${secs(t0)} s`);
});

if (stackUp) await t.test('Glance down before the step', async (t) => {
  const t0 = Date.now();
  const uuid = await activeNode(stack, 'e2e-noglance');
  const pid = Number((await readFile(join(dir, 'run', 'glance.pid'), 'utf8')).trim());
  process.kill(pid, 'SIGTERM');
  await waitFor('Glance to stop', 30, async () => !(await fetch(`${stack.glance}/versions`).then(() => true, () => false)));
  const disk = disks[0]!.path;
  const nBoots = harness.boots.length;
  await baremetal(stack, ['node', 'service', uuid, '--service-steps', snapshotSteps('e2e-noglance', disk)]);
  await harness.waitBoot(uuid, nBoots);
  const n = await waitState(stack, uuid, ['service failed', 'active'], 120);
  t.comment(`last_error: ${n.last_error}`);
  t.equal(n.provision_state, 'service failed', 'service failed');
  t.match(n.last_error, /failed step \{'interface': 'deploy', 'step': 'snapshot'.*\}: creating image e2e-noglance: cannot connect to Glance at http:\/\/127\.0\.0\.1:\d+ \(ConnectFailure\)$/, 'last_error: one line naming the step and the Glance URL', { last_error: n.last_error });
  t.equal(n.maintenance, true, 'maintenance set by Ironic (failure during a step)');
  t.equal(n.driver_internal_info.bmsnap_snapshot, undefined, 'no image was created, nothing recorded');
  t.comment(`glance-down case: ${secs(t0)} s`);
});

completed = true;
