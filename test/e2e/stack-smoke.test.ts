// Smoke test of the real-OpenStack test stack (test/stack/): Ironic 29 + Glance 30 from Debian
// trixie, run from a cached chroot on 127.0.0.1 by test/stack/openstack-stack.sh. Besides showing
// the stack works, it pins down how an unmodified Ironic 29 conductor treats our `deploy.snapshot`
// service step (findings in test/stack/README.md):
//   - fake deploy: the step is unknown, the node goes to "service failed";
//   - direct deploy: the node waits in "service wait", where lookup is refused (404) with the
//     default [api]restrict_lookup=True unless the node is fast-track;
//   - with driver_info/fast_track=true a hand-made agent (an HTTPS server in this test) gets its
//     token, [agent]require_tls=True refuses an http callback_url, and the conductor runs
//     service.get_service_steps + service.execute_service_step and returns the node to active;
//   - the TypeScript agent (dist/, if built) runs the same protocol against the real conductor;
//   - [deploy]fast_track=true (global) does the same without per-node settings.
// Needs root (chroot, mount namespaces). The first run builds the chroot (about 5 minutes).
import t, { type Test } from 'tap';
import { execa } from 'execa';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';

import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pickPortIn } from '../lib/ports.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const STACK = join(REPO, 'test/stack/openstack-stack.sh');
const CHROOT = join(REPO, 'test/stack/trixie-chroot.sh');
const TS_AGENT = join(REPO, 'dist/agent/src/cli/main.js');
const CHILD_ENV = { NODE_OPTIONS: '' };   // keep tap's loader hooks out of children

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root (chroot, unshare --mount)');
  process.exit(0);
}

// ------------------------------------------------------------------------------------------------
// helpers

const pickPort = pickPortIn;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const secs = (since: number) => Math.round((Date.now() - since) / 100) / 10;

interface Stack { dir: string; ironic: string; glance: string; ironicPort: number; glancePort: number }

async function stackCmd(args: string[], env: Record<string, string> = {}) {
  return execa('bash', [STACK, ...args], { reject: false, stdin: 'ignore', timeout: 900_000, env: { ...CHILD_ENV, ...env } });
}

/** `openstack baremetal ...` inside the chroot; JSON output parsed when asked for. */
async function baremetal(stack: Stack, args: string[], opts: { json?: boolean; reject?: boolean } = {}) {
  const r = await execa('bash', [STACK, 'run', stack.dir, 'openstack', 'baremetal', ...args, ...(opts.json ? ['-f', 'json'] : [])],
    { reject: false, stdin: 'ignore', timeout: 300_000, env: CHILD_ENV });
  if (opts.reject !== false && r.exitCode !== 0) throw new Error(`openstack baremetal ${args.join(' ')}: rc ${r.exitCode}\n${r.stderr}`);
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), json: opts.json && r.exitCode === 0 ? JSON.parse(String(r.stdout)) : undefined };
}

/** The Ironic REST API, as the agent or an operator sees it. */
async function ironic(stack: Stack, method: string, path: string, body?: unknown, version = '1.95') {
  const res = await fetch(stack.ironic + path, {
    method,
    headers: { 'X-OpenStack-Ironic-API-Version': version, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: any;
  try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
  // Ironic's error body: {"error_message": "<JSON string with faultstring>"}
  let fault: string | undefined;
  if (json?.error_message) {
    try { fault = JSON.parse(json.error_message).faultstring; } catch { fault = String(json.error_message); }
  }
  return { status: res.status, json, text, fault };
}

async function node(stack: Stack, ident: string): Promise<any> {
  const r = await ironic(stack, 'GET', `/v1/nodes/${ident}`);
  if (r.status !== 200) throw new Error(`GET node ${ident}: ${r.status} ${r.text}`);
  return r.json;
}

async function waitState(stack: Stack, ident: string, want: string[], timeoutS = 90): Promise<any> {
  const deadline = Date.now() + timeoutS * 1000;
  let n: any;
  while (Date.now() < deadline) {
    n = await node(stack, ident);
    if (want.includes(n.provision_state)) return n;
    await sleep(300);
  }
  throw new Error(`node ${ident} not in ${want.join('|')} after ${timeoutS}s: ${n?.provision_state} (${n?.last_error})`);
}

/** Enrolls a fake-hardware node and adopts it: active, as if deployed long ago. */
async function activeNode(stack: Stack, name: string, deployIface: string, driverInfo: Record<string, string> = {}): Promise<string> {
  // driver_info is given at creation on purpose: any PATCH of a node on this Ironic sets its
  // parent_node to itself, which breaks every later power-off (see the regression test below).
  const info = Object.entries(driverInfo).flatMap(([k, v]) => ['--driver-info', `${k}=${v}`]);
  const created = await baremetal(stack, ['node', 'create', '--driver', 'fake-hardware', '--name', name, '--deploy-interface', deployIface, ...info], { json: true });
  await baremetal(stack, ['node', 'manage', name, '--wait', '60']);
  await baremetal(stack, ['node', 'adopt', name, '--wait', '60']);
  return created.json.uuid as string;
}

const SNAPSHOT_STEPS = (args: Record<string, unknown> = {}) => JSON.stringify([{ interface: 'deploy', step: 'snapshot', args }]);

// ------------------------------------------------------------------------------------------------
// A hand-made agent: the IPA command API on 127.0.0.1, logging what the conductor sends.

interface Received { method: string; url: string; query: Record<string, string>; body: any }

class HandAgent {
  readonly received: Received[] = [];
  readonly commands: any[] = [];
  token = '';
  private server!: http.Server;
  url = '';
  constructor(readonly tls?: { key: string; cert: string }) {}

  async start(): Promise<void> {
    const handler = (req: IncomingMessage, res: ServerResponse) => { void this.handle(req, res); };
    this.server = this.tls ? https.createServer({ key: this.tls.key, cert: this.tls.cert }, handler) : http.createServer(handler);
    await new Promise<void>((ok) => this.server.listen(0, '127.0.0.1', ok));
    const port = (this.server.address() as { port: number }).port;
    this.url = `${this.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  }
  stop(): Promise<void> {
    this.server.closeAllConnections?.();
    return new Promise((ok) => this.server.close(() => ok()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse) {
    let raw = '';
    for await (const c of req) raw += c;
    const u = new URL(req.url ?? '/', 'http://x');
    const rec: Received = { method: req.method ?? '', url: req.url ?? '', query: Object.fromEntries(u.searchParams), body: raw ? JSON.parse(raw) : null };
    this.received.push(rec);
    const send = (code: number, o: unknown) => { res.writeHead(code, { 'Content-Type': 'application/json' }); res.end(JSON.stringify(o)); };
    if (!u.pathname.startsWith('/v1/commands')) return send(200, { name: 'hand agent' });
    if (!this.token || u.searchParams.get('agent_token') !== this.token) return send(401, { faultcode: 'Client', faultstring: '401 Unauthorized: Token invalid.' });
    if (req.method === 'GET') return send(200, { commands: this.commands });
    const name = String(rec.body?.name ?? '');
    const id = randomUUID();
    if (name === 'service.get_service_steps') {
      const r = {
        id, command_name: 'get_service_steps', command_status: 'SUCCEEDED', command_error: null,
        command_result: {
          service_steps: { BmsnapHardwareManager: [{
            step: 'snapshot', interface: 'deploy', priority: 0, reboot_requested: false, abortable: false,
            argsinfo: { image_name: { description: 'Glance image name', required: false } },
          }] },
          hardware_manager_version: { BmsnapHardwareManager: '1.0' },
        },
      };
      this.commands.push(r);
      return send(200, r);
    }
    if (name === 'service.execute_service_step') {
      const r: any = { id, command_name: 'execute_service_step', command_status: 'RUNNING', command_error: null, command_result: null };
      this.commands.push(r);
      send(200, r);
      setTimeout(() => {
        r.command_status = 'SUCCEEDED';
        r.command_result = { service_result: { image_id: 'hand-made' }, service_step: rec.body.params.step };
      }, 300);
      return;
    }
    const r = { id, command_name: name.split('.')[1] ?? name, command_status: 'SUCCEEDED', command_error: null, command_result: {} };
    this.commands.push(r);
    return send(200, r);
  }

  async waitFor(name: string, timeoutS = 60): Promise<Received> {
    const deadline = Date.now() + timeoutS * 1000;
    for (;;) {
      const r = this.received.find((x) => x.body?.name === name);
      if (r) return r;
      if (Date.now() > deadline) throw new Error(`the conductor never sent ${name}`);
      await sleep(200);
    }
  }
}

async function selfSignedCert(dir: string): Promise<{ key: string; cert: string }> {
  await execa('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes',
    '-keyout', join(dir, 'agent.key'), '-out', join(dir, 'agent.crt'), '-days', '2', '-subj', '/CN=hand-agent',
    '-addext', 'subjectAltName=critical,IP:127.0.0.1'], { stdin: 'ignore' });
  return { key: await readFile(join(dir, 'agent.key'), 'utf8'), cert: await readFile(join(dir, 'agent.crt'), 'utf8') };
}

function heartbeat(stack: Stack, uuid: string, body: Record<string, unknown>) {
  return ironic(stack, 'POST', `/v1/heartbeat/${uuid}`, { agent_version: '10.0.0', ...body }, '1.68');
}
function lookup(stack: Stack, uuid: string) {
  return ironic(stack, 'GET', `/v1/lookup?node_uuid=${uuid}`, undefined, '1.62');
}

// ------------------------------------------------------------------------------------------------

const work = await mkdtemp(join(tmpdir(), 'bmsnap-stack-'));
const ports = new Set<number>();
const stack: Stack = {
  dir: join(work, 'stack'), ironic: '', glance: '',
  ironicPort: await pickPort(16385, 16399, ports), glancePort: await pickPort(19480, 19499, ports),
};
stack.ironic = `http://127.0.0.1:${stack.ironicPort}`;
stack.glance = `http://127.0.0.1:${stack.glancePort}`;
const stackEnv = (extra: Record<string, string> = {}) => ({
  BMSNAP_IRONIC_PORT: String(stack.ironicPort), BMSNAP_GLANCE_PORT: String(stack.glancePort), ...extra,
});
const agents: HandAgent[] = [];
const timings: Record<string, number> = {};

t.teardown(async () => {
  for (const a of agents) await a.stop().catch(() => {});
  const s = Date.now();
  const r = await stackCmd(['stop', stack.dir]);
  timings.stop_s = secs(s);
  if (r.exitCode !== 0) console.error(r.stderr);
  console.error(`# timings: ${JSON.stringify(timings)}`);
  if (process.env.BMSNAP_KEEP_STACK || !t.passing()) console.error(`# stack dir kept for inspection: ${stack.dir}`);
  else await rm(work, { recursive: true, force: true });
});

t.test('chroot (cached after the first build)', async (t) => {
  const s = Date.now();
  const r = await execa('bash', [CHROOT], { reject: false, stdin: 'ignore', timeout: 1_200_000, env: CHILD_ENV });
  timings.chroot_s = secs(s);
  t.equal(r.exitCode, 0, 'trixie-chroot.sh succeeds', { stderr: String(r.stderr).slice(-3000) });
  const root = String(r.stdout).trim();
  t.match(root, /\/trixie-[0-9a-f]{16}$/, `chroot at ${root} (${timings.chroot_s} s)`);
  const pkgs = await readFile(join(root, '.bmsnap-packages'), 'utf8');
  t.match(pkgs, /^ironic-conductor 1:29\./m, 'Ironic 29');
  t.match(pkgs, /^glance-api 2:30\./m, 'Glance 30');
  t.match(pkgs, /^python3-ironicclient 5\.(\d{2,}|[6-9])\./m, 'ironicclient >= 5.6 (has `baremetal node service`)');
});

t.test('stack starts and is healthy', async (t) => {
  const s = Date.now();
  const r = await stackCmd(['start', stack.dir], stackEnv());
  timings.start_s = secs(s);
  t.equal(r.exitCode, 0, `openstack-stack.sh start (${timings.start_s} s)`, { stderr: String(r.stderr).slice(-3000) });
  if (r.exitCode !== 0) return t.bailout('stack did not start');
  const root = await ironic(stack, 'GET', '/');
  t.equal(root.status, 200, 'ironic GET / 200');
  t.equal(root.json.default_version.version, '1.96', 'Ironic 29 (2025.1): max API 1.96');
  const hc = await fetch(`${stack.glance}/healthcheck`);
  t.equal(hc.status, 200, 'glance /healthcheck 200');
  const st = await stackCmd(['status', stack.dir]);
  t.equal(st.exitCode, 0, 'status: all up');
  t.match(String(st.stdout), /^ironic \d+ http:\/\/127\.0\.0\.1:\d+$/m);
  const drivers = await baremetal(stack, ['driver', 'list'], { json: true });
  t.ok(drivers.json.some((d: any) => d['Supported driver(s)'] === 'fake-hardware'), 'openstack baremetal driver list: fake-hardware');
});

t.test('fake deploy: active -> service deploy.snapshot -> service failed', async (t) => {
  await baremetal(stack, ['node', 'create', '--driver', 'fake-hardware', '--name', 'smoke-fake', '--deploy-interface', 'fake']);
  for (const verb of ['manage', 'provide', 'deploy']) await baremetal(stack, ['node', verb, 'smoke-fake', '--wait', '60']);
  t.equal((await node(stack, 'smoke-fake')).provision_state, 'active', 'manage, provide, deploy (fake) -> active');

  const s = Date.now();
  const svc = await baremetal(stack, ['node', 'service', 'smoke-fake', '--service-steps', SNAPSHOT_STEPS(), '--wait', '60'], { reject: false });
  t.not(svc.exitCode, 0, `\`node service --wait\` fails (${secs(s)} s)`);
  const n = await node(stack, 'smoke-fake');
  t.equal(n.provision_state, 'service failed', 'provision_state: service failed');
  t.equal(n.target_provision_state, 'active');
  t.match(n.last_error, /^Cannot service node [0-9a-f-]+: node does not support this service step: \{'interface': 'deploy', 'step': 'snapshot', 'args': \{\}\}$/, 'last_error');
  t.same(n.service_step, {}, 'no step ran');
  t.equal(n.maintenance, false, 'not put in maintenance');

  const abort = await baremetal(stack, ['node', 'abort', 'smoke-fake'], { reject: false });
  t.not(abort.exitCode, 0, 'abort is refused in "service failed" on 29 (allowed from 2025.2)');
  t.match(abort.stderr, /can not be performed on node .* while it is in state "service failed"/);

  // Ironic 29 drops reserved power steps from a service step list (log: "remaining steps: []"),
  // so this is a no-op service run: the way back to active without abort.
  await baremetal(stack, ['node', 'service', 'smoke-fake', '--service-steps', '[{"interface":"power","step":"power_on"}]', '--wait', '60']);
  t.equal((await node(stack, 'smoke-fake')).provision_state, 'active', 'recovered by servicing with the reserved step power.power_on');
  t.match(await readFile(join(stack.dir, 'log/ironic.log'), 'utf8'), /Executing service on node [0-9a-f-]+, remaining steps: \[\]/, 'which runs no step at all');
});

t.test('glance: create + upload from the host with curl', async (t) => {
  const data = randomBytes(4 * 1024 * 1024);
  const file = join(work, 'upload.bin');
  await writeFile(file, data);
  const created = await execa('curl', ['-sS', '-f', '-X', 'POST', `${stack.glance}/v2/images`, '-H', 'Content-Type: application/json',
    '-d', JSON.stringify({ name: 'stack-smoke', disk_format: 'raw', container_format: 'bare' })], { stdin: 'ignore' });
  const img = JSON.parse(String(created.stdout));
  t.equal(img.status, 'queued', 'image created (queued)');
  const s = Date.now();
  const up = await execa('curl', ['-sS', '-f', '-o', '/dev/null', '-w', '%{http_code}', '-T', file, '-H', 'Content-Type: application/octet-stream',
    `${stack.glance}/v2/images/${img.id}/file`], { stdin: 'ignore' });
  t.equal(String(up.stdout), '204', `PUT /file 204 (${secs(s)} s for 4 MiB)`);
  const got = await (await fetch(`${stack.glance}/v2/images/${img.id}`)).json() as any;
  t.equal(got.status, 'active');
  t.equal(got.size, data.length);
  t.equal(got.checksum, createHash('md5').update(data).digest('hex'), 'md5 checksum');
  t.equal(got.os_hash_algo, 'sha512');
  t.equal(got.os_hash_value, createHash('sha512').update(data).digest('hex'), 'sha512');
  const back = Buffer.from(await (await fetch(`${stack.glance}/v2/images/${img.id}/file`)).arrayBuffer());
  t.ok(back.equals(data), 'download is identical');
});

t.test('direct deploy without fast-track: lookup refused in "service wait"', async (t) => {
  const uuid = await activeNode(stack, 'smoke-direct', 'direct');
  const svc = await baremetal(stack, ['node', 'service', 'smoke-direct', '--service-steps', SNAPSHOT_STEPS()]);
  t.equal(svc.exitCode, 0, 'service accepted');
  const n = await waitState(stack, uuid, ['service wait', 'service failed']);
  t.equal(n.provision_state, 'service wait', 'the conductor "boots the ramdisk" (fake boot) and waits');
  t.equal(n.power_state, 'power on');
  t.same(n.service_step, {}, 'no step yet: the agent steps are unknown until the first heartbeat');
  t.equal(n.driver_internal_info.agent_secret_token, undefined, 'no token yet (wiped at the start of servicing)');

  const lk = await lookup(stack, uuid);
  t.equal(lk.status, 404, 'GET /v1/lookup?node_uuid=... -> 404 ([api]restrict_lookup=True, 29.x)');
  t.equal(lk.fault, 'Resource could not be found.');
  const log = await readFile(join(stack.dir, 'log/ironic.log'), 'utf8');
  t.match(log, new RegExp(`Lookup is not allowed for node ${uuid} in the provision state service wait`), 'ironic.log says why');

  const noToken = await heartbeat(stack, uuid, { callback_url: 'https://127.0.0.1:9' });
  t.equal(noToken.status, 400);
  t.equal(noToken.fault, 'Agent token is required for heartbeat processing.', 'heartbeat without a token');
  const badToken = await heartbeat(stack, uuid, { callback_url: 'https://127.0.0.1:9', agent_token: 'x'.repeat(43) });
  t.equal(badToken.fault, 'Invalid or missing agent token received.', 'heartbeat with a made-up token');

  await baremetal(stack, ['node', 'abort', 'smoke-direct']);
  const after = await waitState(stack, uuid, ['service failed']);
  t.equal(after.provision_state, 'service failed', 'abort from "service wait" -> service failed');
  t.equal(after.last_error, null, 'abort leaves no last_error');
});

t.test('Debian ironic 29.0.5-0+deb13u3: any node PATCH sets parent_node to the node itself', async (t) => {
  const uuid = await activeNode(stack, 'smoke-patch', 'direct');
  t.equal((await node(stack, uuid)).parent_node, null, 'no parent after create/manage/adopt');
  await baremetal(stack, ['node', 'set', 'smoke-patch', '--extra', 'a=b']);
  const n = await node(stack, uuid);
  t.equal(n.parent_node, uuid, 'after `node set --extra a=b` (PATCH /extra/a only), parent_node == own uuid');
  // consequence: every later power-off tries to lock the node as its own child -> ChildNodeLocked
  await baremetal(stack, ['node', 'service', 'smoke-patch', '--service-steps', SNAPSHOT_STEPS()]);
  const f = await waitState(stack, uuid, ['service failed', 'service wait']);
  t.equal(f.provision_state, 'service failed', 'servicing cannot even power-cycle into the ramdisk');
  t.match(f.last_error, /^Failed to prepare node [0-9a-f-]+ for service: Node [0-9a-f-]+ child_node [0-9a-f-]+ is presently locked/, 'last_error: ChildNodeLocked');
});

t.test('direct deploy + driver_info/fast_track: a hand-made agent runs deploy.snapshot', async (t) => {
  const tls = await selfSignedCert(work);
  const agent = new HandAgent(tls);
  agents.push(agent);
  await agent.start();
  const uuid = await activeNode(stack, 'smoke-fast', 'direct', { fast_track: 'true' });
  await baremetal(stack, ['node', 'service', 'smoke-fast', '--service-steps', SNAPSHOT_STEPS({ image_name: 'x' })]);
  await waitState(stack, uuid, ['service wait']);

  const lk = await lookup(stack, uuid);
  t.equal(lk.status, 200, 'lookup in "service wait" works for a fast-track node');
  const token = lk.json.config.agent_token as string;
  t.ok(token.length >= 32, 'a fresh agent token');
  t.equal(lk.json.config.heartbeat_timeout, 30, 'config.heartbeat_timeout = [api]ramdisk_heartbeat_timeout');
  t.equal(lk.json.node.driver_internal_info.agent_secret_token, '******', 'masked in the node');
  const again = await lookup(stack, uuid);
  t.equal(again.json.config.agent_token, '******', 'a second lookup gets no token');
  agent.token = token;

  const plain = await heartbeat(stack, uuid, { callback_url: 'http://127.0.0.1:9', agent_token: token });
  t.equal(plain.status, 400);
  t.equal(plain.fault, 'TLS is required by configuration', 'require_tls=True (default) refuses an http:// callback_url');

  const s = Date.now();
  const hb = await heartbeat(stack, uuid, { callback_url: agent.url, agent_token: token, agent_verify_ca: tls.cert });
  t.equal(hb.status, 202, 'https callback_url + agent_verify_ca (self-signed, IP SAN 127.0.0.1) accepted');
  const gss = await agent.waitFor('service.get_service_steps');
  t.equal(gss.query.wait, 'true');
  t.equal(gss.query.agent_token, token, 'token as ?agent_token=');
  t.same(Object.keys(gss.body.params).sort(), ['node', 'ports'], 'get_service_steps params: node, ports');
  const exe = await agent.waitFor('service.execute_service_step');
  t.equal(exe.query.wait, 'false');
  t.same(exe.body.params.step, { interface: 'deploy', step: 'snapshot', args: { image_name: 'x' }, abortable: false, priority: 0 }, 'params.step');
  t.same(exe.body.params.service_version, { BmsnapHardwareManager: '1.0' }, 'params.service_version = hardware_manager_version');
  t.same(exe.body.params.ports, [], 'params.ports');
  t.equal(exe.body.params.node.provision_state, 'servicing');
  t.equal(exe.body.params.node.driver_internal_info.agent_secret_token, '******', 'node is masked');
  t.match(exe.body.params.node.driver_internal_info.agent_verify_ca, /^\/stack\/ironic\/certificates\/[0-9a-f-]+\.crt$/, 'the conductor stored our cert');
  t.comment(`first heartbeat -> execute_service_step: ${secs(s)} s`);
  const mid = await node(stack, uuid);
  t.equal(mid.provision_state, 'service wait');
  t.same(mid.service_step, { interface: 'deploy', step: 'snapshot', args: { image_name: 'x' }, abortable: false, priority: 0 }, 'node.service_step (visible through the API)');

  await sleep(500);   // the step "finishes"; the agent then heartbeats
  t.equal((await heartbeat(stack, uuid, { callback_url: agent.url, agent_token: token, agent_verify_ca: tls.cert })).status, 202);
  const done = await waitState(stack, uuid, ['active', 'service failed'], 60);
  t.equal(done.provision_state, 'active', 'next heartbeat: GET /v1/commands/ -> SUCCEEDED -> tear down -> active');
  t.equal(done.last_error, null);
  t.ok(agent.received.some((r) => r.method === 'GET' && r.url.startsWith('/v1/commands')), 'the conductor polled GET /v1/commands/');
  t.equal(agent.received.filter((r) => r.method === 'POST').length, 2, 'two commands in all (no standby.*/log.* for servicing)');
  await writeFile(join(stack.dir, 'log/hand-agent-received.json'), JSON.stringify(agent.received, null, 1));
});

t.test('the TypeScript agent (dist/) against the real conductor', { skip: existsSync(TS_AGENT) ? false : 'npm run build first' }, async (t) => {
  const uuid = await activeNode(stack, 'smoke-ts', 'direct', { fast_track: 'true' });
  // No disk is snapshotted here: the hint matches nothing, so the step fails on the agent -
  // which exercises lookup, auto-TLS heartbeat, step discovery, argsinfo validation, execution
  // and failure reporting against the real conductor.
  await baremetal(stack, ['node', 'service', 'smoke-ts', '--service-steps',
    SNAPSHOT_STEPS({ root_device_hints: { name: '/dev/bmsnap-no-such-disk' }, glance_url: stack.glance, image_name: 'ts-agent' })]);
  await waitState(stack, uuid, ['service wait']);
  const port = await pickPort(19960, 19979, ports);
  const child = execa('node', [TS_AGENT, 'agent', '--api-url', stack.ironic, '--node-uuid', uuid, '--port', String(port),
    '--listen', '127.0.0.1', '--advertise-host', '127.0.0.1', '--heartbeat-seconds', '3'],
  { reject: false, stdin: 'ignore', env: CHILD_ENV, all: true });
  try {
    const n = await waitState(stack, uuid, ['service failed', 'active'], 90);
    t.equal(n.provision_state, 'service failed', 'the step failed on the agent, as intended');
    t.match(n.last_error, /^Service step deploy\.snapshot failed on node [0-9a-f-]+\. .*bmsnap-no-such-disk/, 'last_error carries the agent\'s message');
    t.equal(n.driver_internal_info.agent_url, `https://127.0.0.1:${port}`, 'auto-TLS callback_url');
    t.ok(n.driver_internal_info.agent_cached_service_steps?.deploy?.some((s: any) => s.step === 'snapshot'), 'the agent advertised deploy.snapshot');
    t.equal(n.maintenance, false, 'an agent step failure does not set maintenance');
  } finally {
    child.kill('SIGTERM');
    const r = await child;
    await writeFile(join(stack.dir, 'log/ts-agent.log'), String(r.all ?? ''));
  }
});

t.test('[deploy]fast_track=true (global) and require_tls=false, after a restart', async (t) => {
  let r = await stackCmd(['stop', stack.dir]);
  t.equal(r.exitCode, 0, 'stop');
  const s = Date.now();
  r = await stackCmd(['start', stack.dir], stackEnv({ BMSNAP_IRONIC_FAST_TRACK: 'true', BMSNAP_IRONIC_REQUIRE_TLS: 'false' }));
  timings.restart_s = secs(s);
  t.equal(r.exitCode, 0, `restart on the same DIR (${timings.restart_s} s)`, { stderr: String(r.stderr).slice(-2000) });
  t.equal((await node(stack, 'smoke-fake')).provision_state, 'active', 'nodes survive a restart');

  const agent = new HandAgent();
  agents.push(agent);
  await agent.start();
  const uuid = await activeNode(stack, 'smoke-global', 'direct');
  await baremetal(stack, ['node', 'service', 'smoke-global', '--service-steps', SNAPSHOT_STEPS()]);
  await waitState(stack, uuid, ['service wait']);
  const lk = await lookup(stack, uuid);
  t.equal(lk.status, 200, 'lookup in "service wait" with [deploy]fast_track=true, no driver_info');
  agent.token = lk.json.config.agent_token;
  const hb = await heartbeat(stack, uuid, { callback_url: agent.url, agent_token: agent.token });
  t.equal(hb.status, 202, 'http:// callback_url accepted with require_tls=false');
  await agent.waitFor('service.execute_service_step');
  await sleep(500);
  await heartbeat(stack, uuid, { callback_url: agent.url, agent_token: agent.token });
  t.equal((await waitState(stack, uuid, ['active', 'service failed'])).provision_state, 'active', 'back to active');
});
