// End-to-end of `bmsnap server-image-create` (issue 7, the VM-parity trigger) against the REAL
// Ironic 29 + Glance 30 stack (test/stack/, bmsnap plugin loaded) with the TypeScript agent as the
// ramdisk, as in ironic-snapshot.test.ts. Nova cannot run here: a loopback server replays a
// recorded Nova response (test/lib/fake-nova.ts). Keystone is real (test/lib/keystone.ts): its
// catalog gives the baremetal and compute endpoints in the last case.
// Cases: by node name with --wait (image id on stdout, image active, node active); a failing
// snapshot (root device hint that matches no disk) -> exit 1 with the node's last_error; bad
// input -> one-line errors; a Nova server by name (hypervisor_hostname) and by id
// (instance_uuid), hidden attributes, unknown server; Keystone password auth.
// Needs root (chroot, mount namespaces). BMSNAP_KEEP_STACK=1 keeps the work dir.
import t, { type Test } from 'tap';
import { execa } from 'execa';
import { mkdir, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildDisk, type TestDisk } from '../lib/disks.js';
import { pickPortIn } from '../lib/ports.js';
import { FakeBootWatcher, IronicStack, secs } from '../lib/ironic-stack.js';
import { TS_AGENT, finishStackRun, requireRootAndAgent, tsAgentBooter, type Ramdisk } from '../lib/ts-ramdisk.js';
import { startFakeNova, type FakeNova } from '../lib/fake-nova.js';
import { startKeystone, type LocalKeystone } from '../lib/keystone.js';
import { singleLine } from '../../agent/src/trigger/follow.js';

requireRootAndAgent(t, 'chroot, unshare --mount');

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const taken = new Set<number>();
const pickPort = (lo: number, hi: number) => pickPortIn(lo, hi, taken);

interface CliResult { exitCode: number; stdout: string; stderr: string; seconds: number }

/**
 * Runs bmsnap server-image-create with exactly ENV (plus PATH/HOME), none of the runner's OS_*
 * variables; with TTY under script(1), on a pty for stdout and stderr alike (both in stdout).
 */
async function bmsnap(args: string[], env: Record<string, string> = {}, tty = false): Promise<CliResult> {
  const t0 = Date.now();
  const argv = ['node', TS_AGENT, 'server-image-create', ...args];
  const quote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const [cmd, ...rest] = tty ? ['script', '-qefc', argv.map(quote).join(' '), '/dev/null'] : argv;
  const r = await execa(cmd!, rest, {
    reject: false, stdin: 'ignore', extendEnv: false, timeout: 600_000, cwd: work,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: work, NODE_OPTIONS: '', ...(tty ? { TERM: 'dumb' } : {}), ...env },
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), seconds: secs(t0) };
}

/** stderr split into pino JSON records and other lines. */
function stderrOf(r: CliResult): { logs: Record<string, any>[]; other: string[] } {
  const logs: Record<string, any>[] = [];
  const other: string[] = [];
  for (const line of r.stderr.split('\n').filter((l) => l.trim())) {
    try { logs.push(JSON.parse(line) as Record<string, any>); } catch { other.push(line); }
  }
  return { logs, other };
}

/** Exit STATUS with exactly one non-log line on stderr, `bmsnap: ...` matching RE, nothing on stdout. */
function oneLineError(t: Test, r: CliResult, status: number, re: RegExp): string {
  const { other } = stderrOf(r);
  t.equal(r.exitCode, status, `exit status ${status}`, { stderr: r.stderr });
  t.equal(other.length, 1, 'one line on stderr besides log records', { other });
  t.match(other[0] ?? '', /^bmsnap: /, 'it starts with "bmsnap: "');
  t.match(other[0] ?? '', re, 'it says what is wrong');
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
  t.equal(r.stdout, '', 'nothing on stdout');
  return other[0] ?? '';
}

// ------------------------------------------------------------------------------------------------

const started = Date.now();
let completed = false;
const work = await mkdtemp(join(tmpdir(), 'bmsnap-sic-e2e-'));
t.comment(`work dir ${work}`);
const stack = new IronicStack({
  dir: join(work, 'stack'),
  ironicPort: await pickPort(16200, 16299),
  glancePort: await pickPort(19200, 19209),
});
await mkdir(join(work, 'cmdlines'), { recursive: true });
const harness = new FakeBootWatcher<Ramdisk>(stack.bootDir, join(work, 'cmdlines'),
  tsAgentBooter({ logDir: join(stack.dir, 'log'), ports: [19240, 19299], taken }));
const disks: TestDisk[] = [];
let nova: FakeNova | undefined;
let keystone: LocalKeystone | undefined;

t.teardown(async () => {
  await nova?.close();
  await keystone?.dispose().catch((e: Error) => console.error(`keystone dispose: ${e.message}`));
  await finishStackRun({ harness, stack, disks, work, keep: !t.passing() || !completed, started });
});

let disk = '';
let stackUp = false;
await t.test('stack with the bmsnap plugin, a test disk, a fake Nova', async (t) => {
  const [err, d] = await Promise.all([stack.start(), buildDisk('gpt', work)]);
  disks.push(d);
  disk = d.path;
  if (err) { t.fail('stack start', { output: err }); return; }
  nova = await startFakeNova(await pickPort(19210, 19219));
  stackUp = true;
  harness.start();
  t.pass(`stack up after ${secs(started)} s; Nova replay at ${nova.url}`);
});
if (!stackUp) process.exitCode = 1;

const noauth = () => ({ OS_AUTH_TYPE: 'none', OS_ENDPOINT: stack.ironic });
const rootDevice = () => `root_device={"name": "${disk}"}`;

/** A node created through the API with fixed fields (uuid, instance_uuid), managed and adopted. */
async function restNode(fields: Record<string, unknown>): Promise<string> {
  const res = await fetch(`${stack.ironic}/v1/nodes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'X-OpenStack-Ironic-API-Version': '1.95' },
    body: JSON.stringify({ driver: 'bmsnap-fake-hardware', deploy_interface: 'bmsnap', boot_interface: 'bmsnap-fake',
      properties: { root_device: { name: disk } }, ...fields }),
  });
  if (res.status !== 201) throw new Error(`POST /v1/nodes: ${res.status} ${await res.text()}`);
  const uuid = ((await res.json()) as { uuid: string }).uuid;
  await stack.baremetal(['node', 'manage', uuid, '--wait', '60']);
  await stack.baremetal(['node', 'adopt', uuid, '--wait', '60']);
  return uuid;
}

async function glanceImage(id: string): Promise<any> {
  const res = await fetch(`${stack.glance}/v2/images/${id}`);
  return res.status === 200 ? res.json() : { status: `HTTP ${res.status}` };
}

// ------------------------------------------------------------------------------------------------

if (stackUp) await t.test('by node name, --wait: image id on stdout, image active, node active', async (t) => {
  const uuid = await stack.activeNode('sic-ok', ['--property', rootDevice()]);
  const r = await bmsnap(['sic-ok', 'sic-image', '--wait', '--property', 'purpose=e2e', '--visibility', 'shared'], noauth());
  t.comment(`server-image-create --wait: ${r.seconds} s`);
  t.equal(r.exitCode, 0, 'exit 0', { stderr: r.stderr });
  const imageId = r.stdout.trim();
  t.match(imageId, UUID, 'stdout is the image id', { stdout: r.stdout });
  const n = await stack.getNode(uuid);
  t.equal(n.provision_state, 'active', 'node back to active');
  t.equal(n.last_error, null, 'no last_error');
  t.equal(n.driver_internal_info.bmsnap_snapshot?.image_id, imageId, 'the id the node recorded');
  const img = await glanceImage(imageId);
  t.equal(img.status, 'active', 'Glance image active');
  t.equal(img.name, 'sic-image', 'named as asked');
  t.equal(img.visibility, 'shared', '--visibility passed on');
  t.equal(img.purpose, 'e2e', '--property passed on');
  t.equal(img.bmsnap_node_uuid, uuid, 'image tagged with the node');
  const { logs, other } = stderrOf(r);
  t.same(other, [], 'stderr (not a terminal) holds only pino JSON records');
  const states = logs.filter((l) => l.msg === 'node state').map((l) => l.provisionState);
  t.ok(states.includes('service wait'), 'state changes logged (service wait seen)', { states });
  t.equal(states.at(-1), 'active', 'last state logged: active');
  t.match(logs.at(-1), { msg: 'snapshot image active', image: imageId, node: uuid }, 'final record names image and node');
  for (const p of logs.filter((l) => l.msg === 'progress')) t.match(p, { phase: String, bytes: Number, total: Number }, 'progress record');
});

if (stackUp) await t.test('on a terminal: state lines and a final summary on stderr, no JSON', async (t) => {
  const r = await bmsnap(['sic-ok', 'sic-tty-image', '--wait', '--ironic-url', stack.ironic], {}, true);
  const out = String(r.stdout);
  t.equal(r.exitCode, 0, 'exit 0', { out });
  const lines = out.split(/\r?\n/).map((l) => l.replace(/^.*\r\x1b\[K/, '')).filter((l) => l.trim());
  const id = lines.find((l) => UUID.test(l.trim()))?.trim() ?? '';
  t.match(id, UUID, 'the image id on a line of its own');
  t.ok(lines.some((l) => /^bmsnap: node sic-ok: service wait$/.test(l)), 'a line per state change (service wait)', { lines });
  t.ok(lines.some((l) => l.startsWith(`bmsnap: image ${id} ("sic-tty-image") active: snapshot of node sic-ok (`)), 'a closing summary line', { lines });
  t.notMatch(out, /"level":/, 'no JSON log records on a terminal');
  t.equal((await glanceImage(id)).status, 'active', 'Glance image active');
});

if (stackUp) await t.test('a failing snapshot (root device hint matching no disk): exit 1 with the node\'s last_error', async (t) => {
  const uuid = await stack.activeNode('sic-fail', ['--property', rootDevice()]);
  const r = await bmsnap(['sic-fail', 'sic-fail-image', '--wait', '--root-device', 'name=/nonexistent/bmsnap-disk.raw', '--ironic-url', stack.ironic]);
  t.comment(`failure seen after ${r.seconds} s`);
  const n = await stack.getNode(uuid);
  t.equal(n.provision_state, 'service failed', 'node in service failed');
  t.match(n.last_error, /root device \/nonexistent\/bmsnap-disk\.raw does not exist/, 'last_error names the missing disk');
  const line = oneLineError(t, r, 1, /snapshot of node sic-fail \([0-9a-f-]{36}\) failed: /);
  t.equal(line, `bmsnap: snapshot of node sic-fail (${uuid}) failed: ${singleLine(n.last_error)}`, 'the error line carries last_error (on one line)');
  t.same((await stack.glanceImages('sic-fail-image')).filter((i) => i.status !== 'deleted'), [], 'no image left in Glance');
});

if (stackUp) await t.test('bad input: one-line errors', async (t) => {
  const ironic = ['--ironic-url', stack.ironic];
  oneLineError(t, await bmsnap(['no-such-node', 'x', ...ironic]), 1, /^bmsnap: no node "no-such-node" in Ironic/);
  oneLineError(t, await bmsnap(['sic-ok', ...ironic]), 2, /missing NAME/);
  oneLineError(t, await bmsnap([]), 2, /missing SERVER and NAME/);
  oneLineError(t, await bmsnap(['sic-ok', 'x', '--visibility', 'everyone', ...ironic]), 2, /visibility must be one of private, shared, community, public \(got "everyone"\)/);
  oneLineError(t, await bmsnap(['sic-ok', 'x', '--property', 'novalue', ...ironic]), 2, /--property wants KEY=VALUE/);
  oneLineError(t, await bmsnap(['sic-ok', 'x', '--timeout', '5', ...ironic]), 2, /--timeout applies to --wait only/);
  oneLineError(t, await bmsnap(['sic-ok', 'x', '--frobnicate', ...ironic]), 2, /Unknown option '--frobnicate'/);
  // the step's incremental args, checked with the agent's own argcheck before Ironic is asked
  oneLineError(t, await bmsnap(['sic-ok', 'x', '--or-full', ...ironic]), 2, /or_full goes with parent$/);
  oneLineError(t, await bmsnap(['sic-ok', 'x', '--parent', '0c1d5e8a-3f2b-4a6c-9e7d-1b2c3d4e5f60', '--no-index', ...ironic]), 2, /parent needs with_index/);
  oneLineError(t, await bmsnap(['sic-ok', 'x']), 1, /no Ironic to talk to/);
  oneLineError(t, await bmsnap(['sic-fail', 'x', ...ironic]), 1, /node sic-fail \(\S+\) is "service failed"; only an active node can be snapshotted/);
  const dead = await pickPort(19230, 19239);
  taken.delete(dead);
  oneLineError(t, await bmsnap(['sic-ok', 'x', '--ironic-url', `http://127.0.0.1:${dead}`]), 1, new RegExp(`cannot reach Ironic at http://127\\.0\\.0\\.1:${dead}: connection refused`));
  // a node without the bmsnap deploy interface: refused before anything starts
  await stack.baremetal(['node', 'create', '--driver', 'bmsnap-fake-hardware', '--name', 'sic-plain', '--deploy-interface', 'fake', '--boot-interface', 'fake']);
  await stack.baremetal(['node', 'manage', 'sic-plain', '--wait', '60']);
  await stack.baremetal(['node', 'adopt', 'sic-plain', '--wait', '60']);
  oneLineError(t, await bmsnap(['sic-plain', 'x', ...ironic]), 1, /uses deploy interface "fake"; the snapshot step needs "bmsnap"/);
  t.equal((await stack.getNode('sic-plain')).provision_state, 'active', 'that node was left alone');
});

// ------------------------------------------------------------------------------------------------
// Nova: the recorded server gpu-train-01 (id 9f3a...) shows hypervisor_hostname 5b0e... to admins.

const SERVER_ID = '9f3a1c62-48d7-4e0b-b5a9-2c7e61d08f34';
const HYPERVISOR = '5b0e9d2c-7f41-4c8a-9d36-0a1c2e3f4b51';
let instanceNode = '';

if (stackUp) await t.test('Nova: a server by name (hypervisor_hostname), hidden attributes, unknown server, by id (instance_uuid)', async (t) => {
  const n = nova!;
  const withNova = ['--nova-url', n.url];
  const byHost = await restNode({ uuid: HYPERVISOR, name: 'sic-nova' });

  // admin view, by name, no --wait: accepted; stdout says how to follow it
  n.view = 'admin';
  n.requests.length = 0;
  const r = await bmsnap(['gpu-train-01', 'nova-image', ...withNova], noauth());
  t.equal(r.exitCode, 0, 'exit 0', { stderr: r.stderr });
  t.match(r.stdout, `snapshot "nova-image" of server gpu-train-01 (${SERVER_ID}) on node sic-nova (${byHost}) started`, 'stdout: what started where');
  t.match(r.stdout, `openstack baremetal node show ${byHost}`, 'stdout: how to follow it');
  t.same(n.requests.map((q) => q.url), ['/v2.1/servers/detail?name=%5Egpu-train-01%24'], 'Nova asked for the exact name');
  const busy = await stack.getNode(byHost);
  t.ok(busy.provision_state !== 'active' || busy.target_provision_state, `returned while the node is busy (${busy.provision_state} -> ${busy.target_provision_state})`);
  const done = await stack.waitState(byHost, ['active', 'service failed'], 300);
  t.equal(done.provision_state, 'active', 'the snapshot completed on the node of the server');
  const info = done.driver_internal_info.bmsnap_snapshot;
  t.match(info, { image_name: 'nova-image', state: 'active' }, 'bmsnap_snapshot recorded');
  t.equal((await glanceImage(info.image_id)).status, 'active', 'Glance image active');

  // member view: Nova hides hypervisor_hostname, and no node has the instance
  n.view = 'member';
  n.requests.length = 0;
  oneLineError(t, await bmsnap([SERVER_ID, 'x', ...withNova], noauth()), 1,
    new RegExp(`server gpu-train-01 \\(${SERVER_ID}\\) is on no Ironic node: no node has instance_uuid ${SERVER_ID} \\(and Nova shows its hypervisor_hostname to admins only\\)`));
  t.same(n.requests.map((q) => q.url), [`/v2.1/servers/${SERVER_ID}`], 'Nova asked for the server by id');

  oneLineError(t, await bmsnap(['no-such-server', 'x', ...withNova], noauth()), 1, /no server or node "no-such-server" \(neither Nova nor Ironic knows it\)/);

  // Ironic knows the instance (node.instance_uuid, as Nova's Ironic driver sets it): --wait --json
  instanceNode = await restNode({ name: 'sic-instance', instance_uuid: SERVER_ID });
  const w = await bmsnap([SERVER_ID, '--name', 'nova-wait-image', '--wait', '--json', ...withNova], noauth());
  t.equal(w.exitCode, 0, 'exit 0', { stderr: w.stderr });
  const res = JSON.parse(w.stdout);
  t.match(res, { state: 'active', imageName: 'nova-wait-image', node: { uuid: instanceNode, name: 'sic-instance' }, server: { id: SERVER_ID, name: 'gpu-train-01' }, imageId: UUID },
    '--json: the result, with the node found through instance_uuid');
  t.equal((await glanceImage(res.imageId)).status, 'active', 'Glance image active');
  t.equal((await stack.getNode(instanceNode)).provision_state, 'active', 'node back to active');
});

// ------------------------------------------------------------------------------------------------

if (stackUp) await t.test('Keystone: password auth, baremetal and compute endpoints from the catalog', async (t) => {
  const ks = keystone = await startKeystone({ port: await pickPort(19220, 19229) });
  for (const [type, name, url] of [['baremetal', 'ironic', stack.ironic], ['compute', 'nova', nova!.url]] as const) {
    const svc = (await ks.api('POST', '/services', { service: { type, name, enabled: true } })) as { service: { id: string } };
    await ks.api('POST', '/endpoints', { endpoint: { service_id: svc.service.id, interface: 'public', url, region_id: ks.region, enabled: true } });
  }
  const password = 'sic-user-password-SECRET-5d1e';
  await ks.createProjectUser({ project: 'sic', user: 'sic-user', password });
  nova!.view = 'admin';
  nova!.requests.length = 0;
  const r = await bmsnap(['gpu-train-01', 'ks-image', '--wait'], {
    OS_AUTH_URL: `${ks.url}/v3`, OS_USERNAME: 'sic-user', OS_PASSWORD: password, OS_PROJECT_NAME: 'sic',
    OS_USER_DOMAIN_NAME: 'Default', OS_PROJECT_DOMAIN_NAME: 'Default',
  });
  t.equal(r.exitCode, 0, 'exit 0', { stderr: r.stderr });
  const imageId = r.stdout.trim();
  t.match(imageId, UUID, 'stdout is the image id');
  t.equal((await stack.getNode(instanceNode)).driver_internal_info.bmsnap_snapshot?.image_id, imageId, 'snapshot of the node running the server');
  t.equal((await glanceImage(imageId)).status, 'active', 'Glance image active');
  const tokens = [...new Set(nova!.requests.map((q) => q.token))];
  t.equal(tokens.length, 1, 'Nova got one token');
  t.ok((tokens[0] ?? '').length > 100, 'a Keystone token from the catalog login');
  for (const secret of [password, tokens[0] ?? 'none']) t.notOk(r.stdout.includes(secret) || r.stderr.includes(secret), 'no password or token in the output');
});

completed = true;
