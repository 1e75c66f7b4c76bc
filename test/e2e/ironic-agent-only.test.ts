// End-to-end of the agent-only snapshot step (docs/runbook.md "Without the plugin"): REAL Ironic 29
// + Glance 30 (test/stack/), NO bmsnap plugin. The node uses the stock `direct` deploy and stock
// `fake` boot, with driver_info fast_track=true given at create (Ironic 29 allows lookup in
// `service wait` only for fast-track nodes; restrict_lookup and require_tls keep their defaults).
// Stock fake boot writes nothing, so the test starts the TypeScript agent itself once the node is
// in `service wait`: it looks the node up by UUID, gets the token and heartbeats over auto-TLS.
// The step args carry glance_url (Glance runs noauth here, so no glance_token).
// Needs root (chroot, mount namespaces). BMSNAP_KEEP_STACK=1 keeps the stack dir.
import t from 'tap';
import { execa, type ResultPromise } from 'execa';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';

import { Agent, fetch as undiciFetch } from 'undici';
import { join } from 'node:path';
import { REPO_ROOT, run } from '../lib/disks.js';
import { pickPortIn } from '../lib/ports.js';

const STACK = join(REPO_ROOT, 'test/stack/openstack-stack.sh');
const TS_AGENT = join(REPO_ROOT, 'dist/agent/src/cli/main.js');
const CHILD_ENV = { NODE_OPTIONS: '' };

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root (chroot, unshare --mount)');
  process.exit(0);
}
if (!existsSync(TS_AGENT)) {
  t.fail(`${TS_AGENT} is missing: run npm run build`);
  process.exit(1);
}

const pickPort = (lo: number, hi: number) => pickPortIn(lo, hi);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const secs = (since: number) => Math.round((Date.now() - since) / 100) / 10;
async function waitFor<T>(what: string, timeoutS: number, fn: () => Promise<T | undefined | false>, everyMs = 300): Promise<T> {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutS}s waiting for ${what}`);
    await sleep(everyMs);
  }
}

const started = Date.now();
const work = await mkdtemp(join(tmpdir(), 'bmsnap-agent-only-e2e-'));
const dir = join(work, 'stack');
const ironicPort = await pickPort(16340, 16359);
const glancePort = await pickPort(19440, 19459);
const ironic = `http://127.0.0.1:${ironicPort}`;
const glance = `http://127.0.0.1:${glancePort}`;
const env = {
  ...CHILD_ENV,
  BMSNAP_IRONIC_PORT: String(ironicPort), BMSNAP_GLANCE_PORT: String(glancePort),
  BMSNAP_IRONIC_DEPLOY_INTERFACES: 'fake,direct', BMSNAP_IRONIC_BOOT_INTERFACES: 'fake',
};
let agent: ResultPromise | undefined;
let completed = false;

t.teardown(async () => {
  if (agent) { agent.kill('SIGKILL'); await agent.catch(() => undefined); }
  const r = await execa('bash', [STACK, 'stop', dir], { reject: false, stdin: 'ignore', env: CHILD_ENV });
  if (r.exitCode !== 0) console.error(`stack stop: rc ${r.exitCode}\n${r.stdout}\n${r.stderr}`);
  if (process.env.BMSNAP_KEEP_STACK === '1' || !t.passing() || !completed) console.error(`# kept ${work}`);
  else await rm(work, { recursive: true, force: true });
  console.error(`# total ${secs(started)} s`);
});

async function baremetal(args: string[], json = false): Promise<any> {
  const r = await execa('bash', [STACK, 'run', dir, 'openstack', 'baremetal', ...args, ...(json ? ['-f', 'json'] : [])],
    { reject: false, stdin: 'ignore', timeout: 300_000, env: CHILD_ENV });
  if (r.exitCode !== 0) throw new Error(`openstack baremetal ${args.join(' ')}: rc ${r.exitCode}\n${r.stderr}`);
  return json ? JSON.parse(String(r.stdout)) : String(r.stdout);
}
async function getNode(uuid: string): Promise<any> {
  const res = await fetch(`${ironic}/v1/nodes/${uuid}`, { headers: { 'X-OpenStack-Ironic-API-Version': '1.95' } });
  if (res.status !== 200) throw new Error(`GET node: ${res.status} ${await res.text()}`);
  return res.json();
}

await t.test('agent-only snapshot with stock direct deploy', async (t) => {
  const up = await execa('bash', [STACK, 'start', dir], { reject: false, stdin: 'ignore', timeout: 900_000, env });
  if (up.exitCode !== 0) { t.fail('stack start', { stdout: String(up.stdout), stderr: String(up.stderr) }); return; }
  t.pass(`stack up after ${secs(started)} s`);

  // A disk whose copy takes a few seconds: GPT, one partition of incompressible bytes.
  const disk = join(work, 'disk.raw');
  await run('truncate', ['-s', '1G', disk]);
  await run('sgdisk', ['-n1:2048:+600M', '-t1:8300', disk]);
  await run('bash', ['-c', `openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:bmsnap </dev/zero 2>/dev/null | head -c ${600 * 2 ** 20} | dd of=${disk} bs=4M seek=${2048 * 512} oflag=seek_bytes conv=notrunc status=none`]);
  const local = await execa('node', [TS_AGENT, 'image', disk, '-o', join(work, 'local.qcow2'), '--json', '-q'], { env: CHILD_ENV });
  const manifest = JSON.parse(String(local.stdout));
  await rm(join(work, 'local.qcow2'), { force: true });

  const created = await baremetal(['node', 'create', '--driver', 'fake-hardware', '--name', 'agent-only',
    '--deploy-interface', 'direct', '--boot-interface', 'fake', '--driver-info', 'fast_track=true'], true);
  const uuid = created.uuid as string;
  await baremetal(['node', 'manage', uuid, '--wait', '60']);
  await baremetal(['node', 'adopt', uuid, '--wait', '60']);
  t.equal((await getNode(uuid)).provision_state, 'active', 'node active (manage + adopt)');

  const steps = [{ interface: 'deploy', step: 'snapshot', args: { image_name: 'agent-only', glance_url: glance, root_device_hints: { name: disk } } }];
  const svc = Date.now();
  await baremetal(['node', 'service', uuid, '--service-steps', JSON.stringify(steps)]);
  await waitFor('service wait', 60, async () => (await getNode(uuid)).provision_state === 'service wait');

  const agentPort = await pickPort(19700, 19799);
  const log = join(dir, 'log', 'agent-only-agent.log');
  await mkdir(join(dir, 'log'), { recursive: true });
  agent = execa('node', [TS_AGENT, 'agent', '--api-url', ironic, '--node-uuid', uuid, '--listen', '127.0.0.1',
    '--advertise-host', '127.0.0.1', '--port', String(agentPort), '--heartbeat-seconds', '3'],
  { reject: false, stdin: 'ignore', env: CHILD_ENV, all: true, buffer: false });
  agent.all?.pipe(createWriteStream(log));

  // Poll the agent's status (self-signed auto-TLS: not verified) until the node leaves servicing.
  const insecure = new Agent({ connect: { rejectUnauthorized: false } });
  const seen: any[] = [];
  let n: any;
  for (const deadline = Date.now() + 300_000; Date.now() < deadline;) {
    const st: any = await undiciFetch(`https://127.0.0.1:${agentPort}/v1/status`, { dispatcher: insecure })
      .then((r) => r.json(), () => undefined);
    if (st?.running) seen.push(st.running);
    n = await getNode(uuid);
    if (['active', 'service failed'].includes(n.provision_state) && !n.reservation) break;
    await sleep(150);
  }
  await insecure.close();
  t.comment(`service -> ${n?.provision_state} in ${secs(svc)} s; ${seen.length} running statuses`);
  t.equal(n?.provision_state, 'active', 'node back to active', { last_error: n?.last_error });
  t.equal(n?.last_error, null, 'no last_error');
  const withProgress = seen.filter((r) => typeof r.progress?.phase === 'string' && typeof r.progress?.bytes === 'number' && typeof r.progress?.percent === 'number');
  const last = withProgress[withProgress.length - 1];
  t.comment(`progress seen: ${[...new Set(withProgress.map((r) => `${r.progress.phase} ${r.progress.percent}%`))].join(', ')}`);
  t.ok(withProgress.some((r) => r.progress.bytes > 0), 'some progress reported bytes > 0');
  t.ok(last, '/v1/status showed a running step with progress (phase/bytes/percent)', { seen: seen.slice(-3) });
  t.equal(last?.command_name, 'execute_service_step', 'the running command is execute_service_step');

  const imgs: any[] = ((await (await fetch(`${glance}/v2/images?name=agent-only`)).json()) as any).images;
  t.equal(imgs.length, 1, 'one Glance image agent-only');
  const img = imgs[0] ?? {};
  t.equal(img.status, 'active', 'Glance image active');
  t.equal(img.bmsnap_node_uuid, uuid, 'image tagged with the node');
  t.equal(img.size, manifest.bytesWritten, 'Glance size = local bmsnap image manifest');
  t.equal(img.checksum, manifest.md5, 'Glance checksum = manifest md5');
  t.equal(img.os_hash_value, manifest.sha512, 'Glance os_hash_value = manifest sha512');
  completed = true;
});
