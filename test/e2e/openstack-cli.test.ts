// End-to-end of `openstack baremetal node snapshot` (issue 13): the REAL `openstack` CLI of
// Debian trixie (python3-openstackclient) with ironic-step-py's OSC plugin (bmsnap_openstack.osc,
// found through the entry points of the stack's generated dist-info), against REAL Ironic 29 +
// Glance 30 + Keystone (test/stack/), all validating tokens (BMSNAP_IRONIC_AUTH=keystone, Ironic's
// stock policy). The "ramdisk" is the TypeScript agent, started when the bmsnap-fake boot
// interface writes its command line (as in ironic-snapshot.test.ts).
// Cases: --help and bad input; success as the (system-scoped) admin (image active, downloaded bytes = Glance's
// digests, qemu-img clean); a non-admin project member snapshotting their project's node (image
// owned by their project), then a delta on that image (--parent: parent and counts shown); refusal for another project's node (hidden: not found; leased to the
// user's project: Ironic's policy says 403); a failing step (service failed, no image, last_error
// in one line, exit 1); no password or token in any output, node field or log.
// Needs root (chroot, mount namespaces, loop devices). BMSNAP_KEEP_STACK=1 keeps the stack dir.
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildDisk, type TestDisk } from '../lib/disks.js';
import { hashFile, qemuImgCheck, qemuImgInfo } from '../lib/verify.js';
import { pickPortIn } from '../lib/ports.js';
import { FakeBootWatcher, IronicStack, secs, type CloudUser } from '../lib/ironic-stack.js';
import { finishStackRun, requireRootAndAgent, tsAgentBooter, type Ramdisk } from '../lib/ts-ramdisk.js';

requireRootAndAgent(t, 'chroot, unshare --mount, loop devices');

const taken = new Set<number>();
const pickPort = (lo: number, hi: number) => pickPortIn(lo, hi, taken);
const started = Date.now();
let completed = false;
const work = await mkdtemp(join(tmpdir(), 'bmsnap-osc-e2e-'));
t.comment(`work dir ${work}`);
const stack = new IronicStack({
  dir: join(work, 'stack'),
  ironicPort: await pickPort(16340, 16359),   // not ironic-snapshot's 16360-16384 nor the smoke test's
  glancePort: await pickPort(19440, 19459),
  keystonePort: await pickPort(15100, 15199),
  ironicAuth: 'keystone',
  ironicConf: '[conductor]\nservice_callback_timeout = 60\n',
});
await mkdir(join(work, 'cmdlines'), { recursive: true });
const bootAgent = tsAgentBooter({ logDir: join(stack.dir, 'log'), ports: [19700, 19799], taken });
const harness = new FakeBootWatcher<Ramdisk>(stack.bootDir, join(work, 'cmdlines'), bootAgent);
const disks: TestDisk[] = [];
t.teardown(() => finishStackRun({ harness, stack, disks, work, keep: !t.passing() || !completed, started }));

/** Every output of the CLI, checked at the end for secrets. */
const outputs: [string, string][] = [];
const snapshotCli = async (what: string, args: string[], cloud?: string) => {
  const r = await stack.openstack(['baremetal', 'node', 'snapshot', ...args], { reject: false, ...(cloud ? { cloud } : {}) });
  outputs.push([`${what} stdout`, r.stdout], [`${what} stderr`, r.stderr]);
  return r;
};
/** A CLI error: one line (OSC's own prefix aside), no Python traceback. */
const oneLineError = (t: Test, stderr: string, what: string) => {
  t.notMatch(stderr, /Traceback|File "/, `${what}: no traceback`);
  t.equal(stderr.trim().split('\n').length, 1, `${what}: one line`, { stderr });
};

const users: Record<string, CloudUser & { projectId: string }> = {};
/** The member's snapshot (an image with its index), parent of the delta case. */
let memberImage = '';
let disk = '';

let stackUp = false;
await t.test('stack (Ironic, Glance and Keystone validating tokens) and the plugin command', async (t) => {
  const err = await stack.start();
  if (err) { t.fail('stack start', { output: err }); return; }
  t.pass(`stack up after ${secs(started)} s`);
  stackUp = true;
  harness.start();
  const anon = await fetch(`${stack.ironic}/v1/nodes`, { headers: { 'X-OpenStack-Ironic-API-Version': '1.87' } });
  t.equal(anon.status, 401, 'Ironic refuses a request without a token');
  const help = await stack.openstack(['help', 'baremetal', 'node', 'snapshot']);
  t.match(help.stdout, /usage: openstack baremetal node snapshot .*--name <image-name>/s, '`openstack help baremetal node snapshot`: the usage');
  for (const opt of ['--visibility', '--property', '--scrub', '--wait', '--timeout', '--root-device', '--parent', '--or-full', '--no-index', '<node-or-server>']) t.match(help.stdout, opt, `help lists ${opt}`);
  const list = await stack.openstack(['command', 'list', '--group', 'openstack.bmsnap.v1'], { json: true });
  t.match(JSON.stringify(list.json), /baremetal node snapshot/, 'OSC lists the command in group openstack.bmsnap.v1');

  for (const n of [1, 2]) {
    const u = { user: `osc-user-${n}`, password: `pw-${randomBytes(12).toString('hex')}`, project: `osc-project-${n}` };
    const { projectId } = await stack.keystone!.createProjectUser(u);
    await stack.addCloud(`user${n}`, u);
    users[`user${n}`] = { ...u, projectId };
  }
  disks.push(await buildDisk('gpt', work));
  disk = disks[0]!.path;
});
if (!stackUp) process.exitCode = 1;

if (stackUp) await t.test('bad input: one clear line, non-zero exit, nothing started', async (t) => {
  const uuid = await stack.activeNode('osc-bad');
  const cases: [string, string[], RegExp][] = [
    ['no --name', [uuid], /the following arguments are required: --name/],
    ['bad visibility', [uuid, '--name', 'x', '--visibility', 'everyone'], /argument --visibility: invalid choice: 'everyone'/],
    ['--timeout without --wait', [uuid, '--name', 'x', '--timeout', '10'], /^--timeout applies to --wait only$/m],
    ['bad --timeout', [uuid, '--name', 'x', '--wait', '--timeout', 'soon'], /argument --timeout: must be a whole number of seconds/],
    ['bad --property', [uuid, '--name', 'x', '--property', 'novalue'], /--property.*key=value/i],
    // the conductor's own checks, run before Ironic is asked (it would run them once servicing began)
    ['reserved property', [uuid, '--name', 'x', '--property', 'owner=me'], /^snapshot step: property name 'owner' is not allowed$/m],
    ['unknown root device hint', [uuid, '--name', 'x', '--root-device', 'colour=red'], /^snapshot step: unsupported root device hint\(s\) colour$/m],
    ['--or-full without --parent', [uuid, '--name', 'x', '--or-full'], /^snapshot step: or_full goes with parent$/m],
    ['--parent with --no-index', [uuid, '--name', 'x', '--parent', uuid, '--no-index'], /^snapshot step: parent needs with_index \(a delta stores its own index\)$/m],
    ['--parent with raw', [uuid, '--name', 'x', '--parent', uuid, '--disk-format', 'raw'], /^snapshot step: parent needs disk_format qcow2$/m],
  ];
  for (const [what, args, want] of cases) {
    const r = await snapshotCli(what, args);
    t.not(r.exitCode, 0, `${what}: non-zero exit (${r.exitCode})`);
    t.match(r.stderr, want, `${what}: says why`, { stderr: r.stderr });
    t.notMatch(r.stderr, /Traceback|File "/, `${what}: no traceback`);
    // argparse's own errors come after its usage lines; ours are one line
    if (!/argument|arguments are required/.test(r.stderr)) oneLineError(t, r.stderr, what);
  }
  const n = await stack.getNode(uuid);
  t.equal(n.provision_state, 'active', 'the node was never serviced');
  t.equal(n.driver_internal_info.bmsnap_snapshot, undefined, 'no snapshot recorded');
  const nf = await snapshotCli('unknown node', ['no-such-node', '--name', 'x']);
  t.equal(nf.exitCode, 1, 'unknown node: exit 1');
  t.match(nf.stderr, /^no node "no-such-node" in Ironic that your project may see/m, 'unknown node: says so');
  oneLineError(t, nf.stderr, 'unknown node');
});

if (stackUp) await t.test('success: --wait prints the image, which is active and verified', async (t) => {
  const t0 = Date.now();
  const uuid = await stack.activeNode('osc-ok', ['--owner', users.user1!.projectId]);
  const r = await snapshotCli('success', ['osc-ok', '--name', 'osc-snap', '--wait', '--root-device', `name=${disk}`,
    '--property', 'pipeline=nightly', '--visibility', 'shared', '-f', 'json']);
  t.equal(r.exitCode, 0, 'exit 0', { stderr: r.stderr });
  t.comment(`snapshot --wait: ${secs(t0)} s`);
  const out = JSON.parse(r.stdout);
  t.match(out, { image_id: /^[0-9a-f-]{36}$/, image_name: 'osc-snap', node_uuid: uuid, node_name: 'osc-ok', state: 'active', size: Number }, '-f json: the image and the node');
  t.match(r.stderr, /node osc-ok: servicing\n/, 'stderr: the provision states it went through');
  t.match(r.stderr, /node osc-ok: active$/m, 'stderr: ... back to active');
  const n = await stack.getNode(uuid);
  t.equal(n.provision_state, 'active', 'node back to active');
  t.equal(n.last_error, null, 'no last_error');
  const info = n.driver_internal_info.bmsnap_snapshot;
  t.equal(info.image_id, out.image_id, 'the printed id is the image the node recorded');
  const img: any = await (await stack.glanceFetch(`/v2/images/${out.image_id}`)).json();
  t.equal(img.status, 'active', 'Glance image active');
  t.equal(img.visibility, 'shared', '--visibility passed on');
  t.equal(img.pipeline, 'nightly', '--property passed on');
  t.equal(img.owner, users.user1!.projectId, "image in the node owner's project");
  t.equal(img.size, out.size, 'printed size = Glance size');
  t.equal(img.os_hash_value, info.os_hash_value, "Glance sha512 = the agent's");
  const qcow = join(work, 'osc-snap.qcow2');
  const dl = await stack.glanceFetch(`/v2/images/${out.image_id}/file`);
  await writeFile(qcow, Buffer.from(await dl.arrayBuffer()));
  t.equal(await hashFile(qcow, 'md5'), img.checksum, 'downloaded md5 = Glance checksum');
  t.equal(await hashFile(qcow, 'sha512'), img.os_hash_value, 'downloaded sha512 = Glance os_hash_value');
  t.ok((await qemuImgCheck(qcow)).clean, 'qemu-img check clean');
  t.equal((await qemuImgInfo(qcow))['virtual-size'], disks[0]!.size, 'virtual size = disk size');
});

if (stackUp) await t.test("a project member snapshots their project's node", async (t) => {
  const t0 = Date.now();
  const u = users.user1!;
  const uuid = await stack.activeNode('osc-own', ['--owner', u.projectId]);
  const r = await snapshotCli('member', ['osc-own', '--name', 'osc-own-snap', '--wait', '--root-device', `name=${disk}`, '-f', 'value', '-c', 'image_id'], 'user1');
  t.equal(r.exitCode, 0, 'exit 0 as user1 (member of the owner project)', { stderr: r.stderr });
  t.comment(`member snapshot --wait: ${secs(t0)} s`);
  const id = r.stdout.trim();
  if (!t.match(id, /^[0-9a-f-]{36}$/, '-f value -c image_id: the image id alone')) return;
  t.equal((await stack.getNode(uuid)).driver_internal_info.bmsnap_snapshot.image_id, id, 'the one the node recorded');
  const token = (await stack.keystone!.token(u.user, u.password, u.project)).token;
  const res = await fetch(`${stack.glance}/v2/images/${id}`, { headers: { 'x-auth-token': token } });
  const img: any = await res.json();
  t.equal(res.status, 200, 'user1 reads the image with their own token');
  t.equal(img.owner, u.projectId, "owned by user1's project");
  t.equal(img.status, 'active', 'active');
  memberImage = id;
});

if (stackUp && memberImage) await t.test('a delta on that snapshot (--parent): the parent and the counts shown', async (t) => {
  const t0 = Date.now();
  const r = await snapshotCli('delta', ['osc-own', '--name', 'osc-own-delta', '--parent', memberImage, '--wait',
    '--root-device', `name=${disk}`, '-f', 'json'], 'user1');
  t.equal(r.exitCode, 0, 'exit 0', { stderr: r.stderr });
  t.comment(`delta snapshot --wait: ${secs(t0)} s`);
  const out = JSON.parse(r.stdout);
  t.match(out, { image_id: /^[0-9a-f-]{36}$/, state: 'active', parent_image_id: memberImage,
    delta: { changed_clusters: Number, dropped_clusters: Number, unchanged_clusters: Number } }, '-f json: the parent and the delta counts');
  t.ok(out.delta.unchanged_clusters > 0, 'unchanged clusters left to the parent', out.delta);
  const n = await stack.getNode('osc-own');
  t.equal(n.driver_internal_info.bmsnap_snapshot.parent_image_id, memberImage, 'the node recorded the parent');
  const img: any = await (await stack.glanceFetch(`/v2/images/${out.image_id}`)).json();
  t.equal(img.bmsnap_parent_image, memberImage, 'the delta names its parent in Glance');
});

if (stackUp) await t.test("refused: another project's node", async (t) => {
  const p2 = users.user2!.projectId;
  const hidden = await stack.activeNode('osc-other', ['--owner', p2]);
  const r = await snapshotCli('hidden node', [hidden, '--name', 'osc-steal', '--wait'], 'user1');
  t.equal(r.exitCode, 1, "a node of project 2 only: exit 1");
  t.match(r.stderr, new RegExp(`^no node "${hidden}" in Ironic that your project may see`, 'm'), 'says the node is not visible to the project');
  oneLineError(t, r.stderr, 'hidden node');
  // leased to user1's project: user1 sees it, but Ironic's policy lets only a lessee's admin service it
  const leased = await stack.activeNode('osc-leased', ['--owner', p2, '--lessee', users.user1!.projectId]);
  const l = await snapshotCli('leased node', ['osc-leased', '--name', 'osc-steal', '--wait'], 'user1');
  t.equal(l.exitCode, 1, 'a node leased to project 1: exit 1');
  t.match(l.stderr, /^starting the snapshot on node \S+: Ironic answered 403: .*baremetal:node:set_provision_state/m, "Ironic's 403 and the policy it names", { stderr: l.stderr });
  oneLineError(t, l.stderr, 'leased node');
  for (const u of [hidden, leased]) {
    const n = await stack.getNode(u);
    t.equal(n.provision_state, 'active', `${n.name}: still active, never serviced`);
    t.equal(n.driver_internal_info.bmsnap_snapshot, undefined, `${n.name}: nothing recorded`);
  }
  t.same(await stack.glanceImages('osc-steal'), [], 'no image created');
});

if (stackUp) await t.test('a failing snapshot: exit 1 with the last_error, no image left', async (t) => {
  const t0 = Date.now();
  const uuid = await stack.activeNode('osc-fail', ['--owner', users.user1!.projectId]);
  const r = await snapshotCli('failure', ['osc-fail', '--name', 'osc-fail-snap', '--wait', '--root-device', 'name=/dev/bmsnap-no-such-disk'], 'user1');
  t.comment(`failure: ${secs(t0)} s; ${r.stderr.trim().split('\n').pop()}`);
  t.equal(r.exitCode, 1, 'exit 1');
  const n = await stack.waitState(uuid, ['service failed', 'active'], 60);
  t.equal(n.provision_state, 'service failed', 'node in service failed (the plugin deleted the image)');
  t.match(n.last_error, /root device \/dev\/bmsnap-no-such-disk does not exist/, 'last_error: the agent found no such disk');
  const last = r.stderr.trim().split('\n').pop() ?? '';
  t.match(last, /^snapshot of node osc-fail \([0-9a-f-]+\) failed: .*root device \/dev\/bmsnap-no-such-disk does not exist/, 'the last stderr line: the node and its last_error', { stderr: r.stderr });
  t.notMatch(r.stderr, /Traceback|File "/, 'no traceback');
  t.equal(n.driver_internal_info.bmsnap_snapshot?.state, 'deleted', 'bmsnap_snapshot.state deleted');
  t.same(await stack.glanceImages('osc-fail-snap'), [], 'no image left in Glance');
});

if (stackUp) await t.test('no password or token in any output, node field or log', async (t) => {
  const fernet = /gAAAAA[A-Za-z0-9_-]{60,}/;
  const secrets = [...Object.values(users).map((u) => u.password), ...(await stack.passwords())];
  const nodes = await stack.baremetal(['node', 'list', '--long'], { json: true });
  const texts: [string, string][] = [...outputs, ['`baremetal node list --long -f json`', nodes.stdout]];
  for (const f of await readdir(join(stack.dir, 'log'))) texts.push([`log/${f}`, await readFile(join(stack.dir, 'log', f), 'utf8')]);
  t.ok(texts.length > 20, `${texts.length} outputs and logs to look at, ${secrets.length} passwords`);
  for (const [what, text] of texts) {
    // a failure shows where, with the secret itself masked
    const hits = text.split('\n').flatMap((l, i) => (fernet.test(l) || secrets.some((x) => l.includes(x)))
      ? [`${i + 1}: ${secrets.reduce((m, x) => m.split(x).join('***'), l).replace(new RegExp(fernet, 'g'), '***').slice(0, 300)}`] : []);
    t.same(hits, [], `no token or password in ${what}`);
  }
});

completed = true;
