// End-to-end of the `snapshot` service step (issue 4) against a REAL Ironic 29 conductor and a
// REAL Glance 30 (test/stack/, Debian trixie chroot on 127.0.0.1), with no mocks of either:
//   - ironic-step-py is loaded into Ironic as a plugin (BMSNAP_IRONIC_PLUGIN): hardware type
//     bmsnap-fake-hardware, deploy interface bmsnap, boot interface bmsnap-fake;
//   - bmsnap-fake "boots the ramdisk" by writing the kernel parameters (ipa-api-url, a
//     pre-generated ipa-agent-token, ipa-node-uuid) to [bmsnap]fake_boot_dir/<uuid>.cmdline; the
//     harness below watches that dir and starts the TypeScript agent (dist/) with that command
//     line, and stops it when the file goes away (clean_up_ramdisk = the ramdisk powered off);
//   - [api]restrict_lookup and [agent]require_tls keep their defaults (True): the agent skips
//     lookup (token + uuid on the command line) and heartbeats with auto-TLS;
//   - the stack has its Keystone (BMSNAP_STACK_KEYSTONE=1): Glance validates every token and
//     enforces image owners; the conductor's [glance] logs in as a service user, finds Glance in
//     the catalog and hands the agent a token only in the snapshot command's parameters.
// Cases: success on the GPT test disk (image verified byte for byte after conversion), image owner
// = the node's lessee else its owner, a delta (step arg parent) on the first image after a few
// files changed, a parent without an index (refused in one line; or_full: a full image), the agent
// killed mid-copy, `baremetal node abort` during
// service wait, Glance killed during the upload (and back), Glance down before the step; finally
// no token or password in node fields or any log.
// Needs root (chroot, mount namespaces, loop devices for the test disk). BMSNAP_KEEP_STACK=1
// keeps the stack dir.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildDisk, run, withPartitionMount, type TestDisk } from '../lib/disks.js';
import { comparePartitionTables, convertToRaw, digestAll, hashFile, qemuImgCheck, qemuImgInfo, sha256File } from '../lib/verify.js';
import { pickPortIn } from '../lib/ports.js';
import { FakeBootWatcher, IronicStack, secs, snapshotSteps, waitFor } from '../lib/ironic-stack.js';
import { finishStackRun, requireRootAndAgent, tsAgentBooter, type Ramdisk } from '../lib/ts-ramdisk.js';

const CALLBACK_TIMEOUT = 20;               // [conductor]service_callback_timeout for this stack

requireRootAndAgent(t, 'chroot, unshare --mount, loop devices');

const taken = new Set<number>();
const pickPort = (lo: number, hi: number) => pickPortIn(lo, hi, taken);

// ------------------------------------------------------------------------------------------------

const started = Date.now();
let completed = false;
const work = await mkdtemp(join(tmpdir(), 'bmsnap-ironic-e2e-'));   // not makeTempDir: kept on failure
t.comment(`work dir ${work}`);
const stack = new IronicStack({
  dir: join(work, 'stack'),
  ironicPort: await pickPort(16360, 16384),   // not the smoke test's 16385-16399
  glancePort: await pickPort(19460, 19479),   // not the smoke test's 19480-19499
  keystonePort: await pickPort(15000, 15099),
  ironicConf: `[conductor]\nservice_callback_timeout = ${CALLBACK_TIMEOUT}\n`,
});
/** Passwords of the Keystone users the test creates (checked to be in no log). */
const userPasswords: string[] = [];
const dir = stack.dir;
await mkdir(join(work, 'cmdlines'), { recursive: true });
const bootAgent = tsAgentBooter({ logDir: join(stack.dir, 'log'), ports: [19600, 19699], taken });
const harness = new FakeBootWatcher<Ramdisk>(stack.bootDir, join(work, 'cmdlines'), bootAgent);
const disks: TestDisk[] = [];

t.teardown(() => finishStackRun({ harness, stack, disks, work, keep: !t.passing() || !completed, started }));

// Everything runs in subtests: the root test ends (and runs its teardown) once it has nothing queued.
let stackUp = false;
await t.test('stack with the bmsnap plugin', async (t) => {
  const err = await stack.start();
  if (err) {
    t.fail('stack start', { output: err });
    return;
  }
  t.pass(`stack up after ${secs(started)} s`);
  stackUp = true;
  harness.start();
  const drv = await stack.baremetal(['driver', 'show', 'bmsnap-fake-hardware'], { json: true });
  t.ok(drv.json.enabled_deploy_interfaces.includes('bmsnap'), 'bmsnap deploy interface enabled', { got: drv.json.enabled_deploy_interfaces });
  t.ok(drv.json.enabled_boot_interfaces.includes('bmsnap-fake'), 'bmsnap-fake boot interface enabled', { got: drv.json.enabled_boot_interfaces });
  const anon = await fetch(`${stack.glance}/v2/images`);
  t.equal(anon.status, 401, 'Glance refuses a request without a token (Keystone auth)');
  const bogus = await fetch(`${stack.glance}/v2/images`, { headers: { 'x-auth-token': 'not-a-token' } });
  t.equal(bogus.status, 401, 'Glance refuses a token Keystone did not issue');
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

/** The image of case 1 (a full snapshot with its index): the parent of the incremental case. */
let fullImage: any;

if (stackUp) await t.test('snapshot of the GPT disk into Glance', async (t) => {
  const t0 = Date.now();
  const disk = await buildDisk('gpt', work);
  disks.push(disk);
  const srcSha = await sha256File(disk.path);
  const uuid = await stack.activeNode('e2e-ok');
  t.equal((await stack.getNode(uuid)).provision_state, 'active', 'node adopted: active (enroll -> manage -> adopt)');

  const nBoots = harness.boots.length;
  const svc = Date.now();
  await stack.baremetal(['node', 'service', uuid, '--service-steps', snapshotSteps('e2e-snap', disk.path)]);
  const ramdisk = await harness.waitBoot(uuid, nBoots);
  t.ok(ramdisk.token.length >= 32, 'the ramdisk command line carries a pre-generated agent token');
  const n = await stack.waitState(uuid, ['active', 'service failed'], 300);
  t.comment(`service -> ${n.provision_state} in ${secs(svc)} s`);
  t.equal(n.provision_state, 'active', 'node back to active');
  t.equal(n.last_error, null, 'no last_error');
  t.equal(n.maintenance, false, 'not in maintenance');
  const info = n.driver_internal_info.bmsnap_snapshot;
  t.match(info, { image_id: String, state: 'active', image_name: 'e2e-snap' }, 'driver_internal_info.bmsnap_snapshot');

  const res = await stack.glanceFetch(`/v2/images/${info.image_id}`);
  const img: any = await res.json();
  t.equal(img.status, 'active', 'Glance image active');
  t.equal(img.name, 'e2e-snap', 'image name as asked');
  t.equal(img.disk_format, 'qcow2', 'disk_format qcow2 (default)');
  t.equal(img.bmsnap_node_uuid, uuid, 'image tagged with the node');
  t.equal(img.bmsnap_capture_method, 'ironic-service-step', 'provenance recorded on the image the conductor created (capture method)');
  t.equal(img.bmsnap_partition_table, 'gpt', 'provenance: partition table');
  t.match(img.bmsnap_filesystems, /ext4/, 'provenance: filesystems');
  t.equal(img.size, info.size, 'Glance size = what the agent reported');
  t.equal(img.os_hash_value, info.os_hash_value, 'Glance sha512 = what the agent reported');
  // the cluster index, by default, in a hidden image the conductor created beside it
  t.match(info.index_image_id, /^[0-9a-f-]{36}$/, 'bmsnap_snapshot.index_image_id');
  t.equal(img.bmsnap_index_image, info.index_image_id, 'the image names its index image');
  t.match(img.bmsnap_index_sha256, /^[0-9a-f]{64}$/, '... and records its SHA-256');
  const idx: any = await (await stack.glanceFetch(`/v2/images/${info.index_image_id}`)).json();
  t.match(idx, { status: 'active', os_hidden: true, name: 'e2e-snap.bmsnap-index', bmsnap_index_of: img.id, owner: img.owner, visibility: img.visibility },
    'the index image: active, hidden, describes the image, same owner and visibility');
  fullImage = img;
  t.equal(info.upload_credential, undefined, 'the upload credential is gone from the node');
  t.same(await uploadCredentials(), [], 'and from Keystone (deleted once the image was verified)');
  // Glance enforces access rules (service_type = image): a credential like the agent's reads
  // its image and nothing else
  const ks = stack.keystone!;
  const admin = await ks.token('admin', ks.admin.password, 'admin');
  const probe = (await ks.api('POST', `/users/${admin.userId}/application_credentials`, { application_credential: {
    name: 'probe-access-rules', access_rules: [{ service: 'image', method: 'GET', path: `/v2/images/${info.image_id}` }] } }, admin.token)) as { application_credential: { id: string; secret: string } };
  const pt = await fetch(`${ks.url}/v3/auth/tokens`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ auth: { identity: {
    methods: ['application_credential'], application_credential: { id: probe.application_credential.id, secret: probe.application_credential.secret } } } }) });
  const probeToken = pt.headers.get('x-subject-token') ?? '';
  t.equal((await stack.glanceFetch(`/v2/images/${info.image_id}`, { headers: { 'x-auth-token': probeToken } })).status, 200, 'access-rule token: GET of its image 200');
  t.equal((await stack.glanceFetch('/v2/images', { headers: { 'x-auth-token': probeToken } })).status, 401, 'access-rule token: listing images refused (401)');
  await ks.api('DELETE', `/users/${admin.userId}/application_credentials/${probe.application_credential.id}`);

  const qcow = join(work, 'e2e-snap.qcow2');
  const dl = await stack.glanceFetch(`/v2/images/${info.image_id}/file`);
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
  const show = await stack.baremetal(['node', 'show', uuid], { json: true });
  t.notOk(show.stdout.includes(token), 'token not in `baremetal node show -f json`');
  t.equal(show.json.driver_internal_info.agent_secret_token, undefined, 'token wiped from the node after servicing');
  for (const f of await readdir(join(dir, 'log'))) {
    const text = await readFile(join(dir, 'log', f), 'utf8');
    t.notOk(text.includes(token), `token not in log/${f}`);
  }
  t.comment(`success case: ${secs(t0)} s`);
});

// ------------------------------------------------------------------------------------------------
// 2. The image belongs to the node's lessee (else its owner), in a Glance that enforces owners.

/** md5 and sha512 of a response body, streamed. */
async function digestBody(res: Response): Promise<{ md5: string; sha512: string; size: number }> {
  const md5 = createHash('md5');
  const sha = createHash('sha512');
  let size = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) { md5.update(chunk); sha.update(chunk); size += chunk.length; }
  return { md5: md5.digest('hex'), sha512: sha.digest('hex'), size };
}

if (stackUp) await t.test("image owner: the node's lessee, else its owner (Glance with Keystone)", async (t) => {
  const t0 = Date.now();
  const ks = stack.keystone!;
  const member = (n: number) => {
    const u = { project: `e2e-project-${n}`, user: `e2e-user-${n}`, password: `pw-${randomBytes(12).toString('hex')}` };
    userPasswords.push(u.password);
    return u;
  };
  const [u1, u2] = [member(1), member(2)];
  const p1 = (await ks.createProjectUser(u1)).projectId;
  const p2 = (await ks.createProjectUser(u2)).projectId;
  if (!disks.length) disks.push(await buildDisk('gpt', work));   // made by the success case
  const disk = disks[0]!.path;
  const cases = [
    { name: 'e2e-lessee', create: ['--owner', p1, '--lessee', p2], owner: p2, ownerUser: u2, otherUser: u1, what: 'lessee P2 (owner P1)' },
    { name: 'e2e-owner', create: ['--owner', p1], owner: p1, ownerUser: u1, otherUser: u2, what: 'owner P1, no lessee' },
  ];
  // owner/lessee given at `node create` (trixie's 29.0.5 breaks nodes on any PATCH; see test/stack/README.md)
  const uuids: string[] = [];
  for (const c of cases) uuids.push(await stack.activeNode(c.name, c.create));
  // both snapshots at once: two agents read the same disk (read-only)
  const svc = Date.now();
  await Promise.all(cases.map((c, i) => stack.baremetal(['node', 'service', uuids[i]!, '--service-steps', snapshotSteps(c.name, disk)])));
  const nodes = await Promise.all(uuids.map((u) => stack.waitState(u, ['active', 'service failed'], 300)));
  t.comment(`two snapshots: ${secs(svc)} s`);
  for (const [i, c] of cases.entries()) {
    const n = nodes[i];
    t.equal(n.owner, p1, `${c.name}: node owner P1`);
    t.equal(n.lessee, c.create.includes('--lessee') ? p2 : null, `${c.name}: node lessee ${c.create.includes('--lessee') ? 'P2' : 'none'}`);
    t.equal(n.provision_state, 'active', `${c.name}: node back to active`);
    t.equal(n.last_error, null, `${c.name}: no last_error`);
    const info = n.driver_internal_info.bmsnap_snapshot;
    t.match(info, { image_id: String, state: 'active' }, `${c.name}: snapshot recorded`);
    const img: any = await (await stack.glanceFetch(`/v2/images/${info.image_id}`)).json();
    t.equal(img.owner, c.owner, `${c.name} (${c.what}): image owner = ${c.owner === p2 ? 'P2 (the lessee)' : 'P1 (the owner)'}`);
    t.equal(img.visibility, 'private', `${c.name}: visibility private`);
    t.equal(img.status, 'active', `${c.name}: image active`);
    t.equal(img.size, info.size, `${c.name}: Glance size = the agent's`);
    t.equal(img.os_hash_value, info.os_hash_value, `${c.name}: Glance sha512 = the agent's`);
    // Glance enforces the owner: the owning project's member reads it, the other project's does not
    const own = (await ks.token(c.ownerUser.user, c.ownerUser.password, c.ownerUser.project)).token;
    const dl = await fetch(`${stack.glance}/v2/images/${info.image_id}/file`, { headers: { 'x-auth-token': own } });
    t.equal(dl.status, 200, `${c.name}: a member of the owning project downloads it`);
    const got = await digestBody(dl);
    t.same(got, { md5: img.checksum, sha512: img.os_hash_value, size: img.size }, `${c.name}: downloaded bytes have Glance's md5, sha512 and size`);
    const other = (await ks.token(c.otherUser.user, c.otherUser.password, c.otherUser.project)).token;
    const hidden = await fetch(`${stack.glance}/v2/images/${info.image_id}`, { headers: { 'x-auth-token': other } });
    t.equal(hidden.status, 404, `${c.name}: a member of the other project cannot see it (404)`);
    await hidden.body?.cancel();
  }
  t.comment(`owner case: ${secs(t0)} s`);
});

// ------------------------------------------------------------------------------------------------
// 3. Incremental: a delta on case 1's image after a few files changed; parents without an index.

/** Every image called NAME, hidden ones (index images) too. */
async function imagesNamed(name: string): Promise<any[]> {
  const hidden = (await (await stack.glanceFetch(`/v2/images?name=${encodeURIComponent(name)}&os_hidden=true`)).json() as any).images;
  return [...await stack.glanceImages(name), ...hidden];
}

if (stackUp) await t.test('incremental: snapshot step with parent', async (t) => {
  const t0 = Date.now();
  if (!fullImage) { t.fail('case 1 made no image to take a delta on'); return; }
  const disk = disks[0]!;
  // a few files on the root ext4 change, as between two evenings
  const part = disk.partitions.find((p) => p.fs === 'ext4')!.index;
  await withPartitionMount(disk.path, part, 'rw', async (dir) => {
    for (let i = 0; i < 4; i++) await writeFile(join(dir, `evening-${i}.bin`), randomBytes(192 * 1024));
  });

  const uuid = await stack.activeNode('e2e-delta');
  const nBoots = harness.boots.length;
  await stack.baremetal(['node', 'service', uuid, '--service-steps', snapshotSteps('e2e-delta', disk.path, { parent: fullImage.id })]);
  await harness.waitBoot(uuid, nBoots);
  const n = await stack.waitState(uuid, ['active', 'service failed'], 300);
  t.equal(n.provision_state, 'active', 'node back to active', { last_error: n.last_error });
  t.equal(n.last_error, null, 'no last_error');
  const info = n.driver_internal_info.bmsnap_snapshot;
  t.match(info, { image_id: String, index_image_id: String, parent_image_id: fullImage.id, state: 'active', delta: { changed_clusters: Number } },
    'bmsnap_snapshot records the parent and the delta stats');
  t.comment(`delta: ${JSON.stringify(info.delta)}`);
  const img: any = await (await stack.glanceFetch(`/v2/images/${info.image_id}`)).json();
  t.equal(img.status, 'active', 'the delta image is active');
  t.equal(img.bmsnap_parent_image, fullImage.id, 'bmsnap_parent_image: the parent');
  t.equal(img.bmsnap_parent_index_sha256, fullImage.bmsnap_index_sha256, "bmsnap_parent_index_sha256: the parent's index");
  t.equal(img.size, info.size, 'Glance size = what the agent reported');
  t.ok(img.size < fullImage.size / 4, `delta ${img.size} bytes < a quarter of the full ${fullImage.size}`);
  const idx: any = await (await stack.glanceFetch(`/v2/images/${info.index_image_id}`)).json();
  t.match(idx, { status: 'active', os_hidden: true, bmsnap_index_of: img.id }, 'its own index image: active, hidden');
  const parent: any = await (await stack.glanceFetch(`/v2/images/${fullImage.id}`)).json();
  t.equal(parent.protected, true, 'the parent is protected from deletion');
  t.match(parent.bmsnap_protected, /parent of bmsnap deltas/, '... and says why');
  t.same(await uploadCredentials(), [], 'the upload credential is deleted');

  // parent + delta = the changed disk, file by file
  const base = join(work, 'delta-base.qcow2');
  const top = join(work, 'delta-top.qcow2');
  for (const [id, path] of [[fullImage.id, base], [img.id, top]] as const) {
    await writeFile(path, Buffer.from(await (await stack.glanceFetch(`/v2/images/${id}/file`)).arrayBuffer()));
  }
  t.ok((await qemuImgCheck(top)).clean, 'qemu-img check: the delta is clean');
  await run('qemu-img', ['rebase', '-u', '-b', base, '-F', 'qcow2', top]);
  const back = join(work, 'delta.raw');
  await convertToRaw(top, back);
  const [src, out] = [await digestAll(disk.path), await digestAll(back)];
  for (const [i, d] of src) t.equal(out.get(i)?.digest, d.digest, `partition ${i} (${d.fs}): parent + delta = the changed disk`);
  for (const f of [base, top, back]) await rm(f, { force: true });
  t.comment(`delta case: ${secs(t0)} s`);
});

if (stackUp) await t.test('incremental: a parent without an index', async (t) => {
  const t0 = Date.now();
  // an image bmsnap did not take (no bmsnap_index_image): a plain upload
  const made = await stack.glanceFetch('/v2/images', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'e2e-noindex-parent', disk_format: 'qcow2', container_format: 'bare' }) });
  const plain = (await made.json() as any).id as string;
  const disk = disks[0]!.path;
  const steps = (name: string, more: Record<string, unknown> = {}) => snapshotSteps(name, disk, { parent: plain, ...more });

  const uuid = await stack.activeNode('e2e-noindex');
  const nBoots = harness.boots.length;
  await stack.baremetal(['node', 'service', uuid, '--service-steps', steps('e2e-noindex')]);
  await harness.waitBoot(uuid, nBoots);
  const n = await stack.waitState(uuid, ['service failed', 'active'], 120);
  t.comment(`last_error: ${n.last_error}`);
  t.equal(n.provision_state, 'service failed', 'service failed');
  t.notOk(String(n.last_error).includes('\n'), 'last_error is one line');
  t.match(n.last_error, new RegExp(`: parent image ${plain} has no bmsnap cluster index \\(bmsnap_index_image / bmsnap_index_sha256 unset\\): .*take a full snapshot first$`),
    'last_error says the parent has no index', { last_error: n.last_error });
  t.equal(n.driver_internal_info.bmsnap_snapshot, undefined, 'nothing was created, nothing recorded');
  t.same(await imagesNamed('e2e-noindex'), [], 'no image left in Glance');
  t.same(await imagesNamed('e2e-noindex.bmsnap-index'), [], 'no index image either');
  t.same(await uploadCredentials(), [], 'no upload credential');

  // or_full: a full image (with its own index) instead, saying why
  const uuid2 = await stack.activeNode('e2e-orfull');
  const nb2 = harness.boots.length;
  await stack.baremetal(['node', 'service', uuid2, '--service-steps', steps('e2e-orfull', { or_full: true })]);
  await harness.waitBoot(uuid2, nb2);
  const n2 = await stack.waitState(uuid2, ['active', 'service failed'], 300);
  t.equal(n2.provision_state, 'active', 'or_full: node back to active', { last_error: n2.last_error });
  const info = n2.driver_internal_info.bmsnap_snapshot;
  t.match(info.warnings?.[0], /has no bmsnap cluster index.*a full image was taken instead \(or_full\)/, 'bmsnap_snapshot.warnings says why');
  t.equal(info.parent_image_id, undefined, 'no parent recorded');
  const img: any = await (await stack.glanceFetch(`/v2/images/${info.image_id}`)).json();
  t.equal(img.status, 'active', 'a full image, active');
  t.equal(img.bmsnap_parent_image, undefined, 'not a delta');
  t.match(img.bmsnap_index_sha256, /^[0-9a-f]{64}$/, 'with its own index');
  const plainNow: any = await (await stack.glanceFetch(`/v2/images/${plain}`)).json();
  t.equal(plainNow.protected, false, 'the would-be parent was not protected');
  t.comment(`no-index case: ${secs(t0)} s`);
});

// ------------------------------------------------------------------------------------------------
// Failure cases share a disk that takes a while to copy.

let big = '';
let bigSha = '';

/** Starts a snapshot of the big disk; resolves when the agent is uploading (image "saving"). */
async function startBigSnapshot(name: string): Promise<{ uuid: string; ramdisk: Ramdisk; imageId: string }> {
  if (!big) { big = await bigDisk(); bigSha = await sha256File(big); }
  const uuid = await stack.activeNode(name);
  const nBoots = harness.boots.length;
  await stack.baremetal(['node', 'service', uuid, '--service-steps', snapshotSteps(name, big)]);
  const ramdisk = await harness.waitBoot(uuid, nBoots);
  const imageId = await waitFor(`image ${name} saving`, 120, async () => {
    const imgs = await stack.glanceImages(name);
    return imgs.find((i) => i.status === 'saving')?.id as string | undefined;
  });
  return { uuid, ramdisk, imageId };
}

/** The ironic user's application credentials (the plugin's per-snapshot upload credentials). */
async function uploadCredentials(): Promise<{ id: string; name: string; access_rules: { service: string; method: string; path: string }[] }[]> {
  const ks = stack.keystone!;
  const users = (await ks.api('GET', '/users?name=ironic')) as { users: { id: string }[] };
  const creds = (await ks.api('GET', `/users/${users.users[0]!.id}/application_credentials`)) as { application_credentials: { id: string; name: string; access_rules: { service: string; method: string; path: string }[] }[] };
  return creds.application_credentials.filter((c) => c.name.startsWith('bmsnap-upload-'));
}

if (stackUp) await t.test('agent killed mid-copy', async (t) => {
  const t0 = Date.now();
  const { uuid, ramdisk, imageId } = await startBigSnapshot('e2e-kill');
  // what the agent uploads with: a credential for this image only, not the conductor's token
  const during = await uploadCredentials();
  t.same(during.map((c) => c.name), [`bmsnap-upload-${imageId}`], 'during the upload: one application credential, for this image');
  const indexId = (await (await stack.glanceFetch(`/v2/images/${imageId}`)).json() as any).bmsnap_index_image as string;
  t.same(during[0]?.access_rules.map((r) => `${r.service} ${r.method} ${r.path}`).sort(),
    [imageId, indexId].flatMap((id) => [`image GET /v2/images/${id}`, `image PATCH /v2/images/${id}`, `image PUT /v2/images/${id}/file`]).sort(),
    'its access rules: read, tag and upload this image and its index image, nothing else');
  ramdisk.kill('SIGKILL');
  t.pass(`agent killed while image ${imageId} was saving`);
  const n = await stack.waitState(uuid, ['service failed', 'active'], CALLBACK_TIMEOUT + 90);
  t.comment(`last_error: ${n.last_error}`);
  t.equal(n.provision_state, 'service failed', 'service failed');
  t.match(n.last_error, /Timeout reached while servicing the node.*snapshot/, 'last_error: servicing timeout on the snapshot step', { last_error: n.last_error });
  t.equal(n.maintenance, true, 'maintenance set by Ironic (failure during a step)');
  t.equal(n.driver_internal_info.bmsnap_snapshot?.state, 'deleted', 'bmsnap_snapshot.state deleted');
  t.same(await stack.glanceImages('e2e-kill'), [], 'no image left in Glance');
  t.equal((await stack.glanceFetch(`/v2/images/${indexId}`)).status, 404, 'its index image is gone too');
  t.same(await uploadCredentials(), [], 'its upload credential was deleted too');
  t.equal(n.driver_internal_info.bmsnap_snapshot?.upload_credential, undefined, 'and dropped from the node');
  t.equal(await sha256File(big), bigSha, 'source disk unchanged');
  t.comment(`kill case: ${secs(t0)} s`);
});

if (stackUp) await t.test('baremetal node abort during service wait', async (t) => {
  const t0 = Date.now();
  const { uuid, ramdisk } = await startBigSnapshot('e2e-abort');
  const ab = await stack.baremetal(['node', 'abort', uuid], { reject: false });
  t.equal(ab.exitCode, 0, 'abort accepted in service wait', { stderr: ab.stderr });
  // Ironic 29 moves service wait -> service failed without tear_down_service; the plugin's
  // periodic task deletes the image and sets last_error.
  const n = await waitFor('the aborted snapshot to be cleaned up', 90, async () => {
    const x = await stack.getNode(uuid);
    return x.provision_state === 'service failed' && x.last_error && !x.reservation ? x : undefined;
  });
  t.comment(`last_error: ${n.last_error}`);
  t.match(n.last_error, /^Snapshot aborted: its image \S+ was deleted$/, 'last_error says the snapshot was aborted', { last_error: n.last_error });
  t.equal(n.driver_internal_info.bmsnap_snapshot?.state, 'deleted', 'bmsnap_snapshot.state deleted');
  t.same(await stack.glanceImages('e2e-abort'), [], 'no image left in Glance');
  // The agent is still "on" (29 does not tear down on abort); its upload fails against the
  // deleted image. Servicing again with a no-op step brings the node back.
  ramdisk.kill('SIGKILL');
  await stack.baremetal(['node', 'service', uuid, '--service-steps', '[{"interface":"power","step":"power_on"}]']);
  const back = await stack.waitState(uuid, ['active', 'service failed'], 120);
  t.equal(back.provision_state, 'active', 'a no-op service run returns the node to active');
  t.comment(`abort case: ${secs(t0)} s`);
});

if (stackUp) await t.test('Glance killed during the upload, then back', async (t) => {
  const t0 = Date.now();
  const { uuid, ramdisk, imageId } = await startBigSnapshot('e2e-glancekill');
  process.kill(await stack.servicePid('glance'), 'SIGKILL');
  t.pass(`glance-api SIGKILLed while image ${imageId} was saving`);
  const n = await stack.waitState(uuid, ['service failed', 'active'], 120);
  t.comment(`last_error: ${n.last_error}`);
  t.equal(n.provision_state, 'service failed', 'service failed');
  // Ironic 29 handles a failure the agent reports for a service step like a deploy failure
  // (deploying_error_handler): no maintenance, unlike the timeout and Glance-down cases.
  t.equal(n.maintenance, false, 'no maintenance (agent-reported failure, Ironic 29)');
  t.notOk(String(n.last_error).includes('\n'), 'last_error is one line');
  t.match(n.last_error, new RegExp(`^Service step deploy\\.snapshot failed on node ${uuid}\\. uploading image ${imageId}: .*Glance`),
    'last_error names the step, the image and the Glance failure', { last_error: n.last_error });
  t.equal(n.driver_internal_info.bmsnap_snapshot?.state, 'orphaned', 'the delete failed too (Glance down): bmsnap_snapshot.state orphaned');
  await waitFor('the ramdisk to be powered off (tear-down)', 30, async () => ramdisk.exited);

  const err = await stack.restartService('glance');
  t.equal(err, undefined, 'glance-api restarted', { err });
  const back = Date.now();
  const done = await waitFor('the plugin to delete the orphaned image', 60, async () => {
    const x = await stack.getNode(uuid);
    return x.driver_internal_info.bmsnap_snapshot?.state === 'deleted' ? x : undefined;
  });
  t.comment(`orphan deleted ${secs(back)} s after Glance came back`);
  t.equal(done.last_error, n.last_error, 'last_error (the original failure) kept');
  t.equal(done.provision_state, 'service failed', 'still service failed');
  const gone = await stack.glanceFetch(`/v2/images/${imageId}`);
  t.equal(gone.status, 404, `image ${imageId} gone from Glance`);
  t.same(await stack.glanceImages('e2e-glancekill'), [], 'no image of that name left');
  t.equal(await sha256File(big), bigSha, 'source disk unchanged');
  t.comment(`glance-killed case: ${secs(t0)} s`);
});

if (stackUp) await t.test('Glance down before the step', async (t) => {
  const t0 = Date.now();
  const uuid = await stack.activeNode('e2e-noglance');
  const pid = await stack.servicePid('glance');
  process.kill(pid, 'SIGTERM');
  await waitFor('Glance to stop', 30, async () => !(await fetch(`${stack.glance}/versions`).then(() => true, () => false)));
  const disk = disks[0]!.path;
  const nBoots = harness.boots.length;
  await stack.baremetal(['node', 'service', uuid, '--service-steps', snapshotSteps('e2e-noglance', disk)]);
  await harness.waitBoot(uuid, nBoots);
  const n = await stack.waitState(uuid, ['service failed', 'active'], 120);
  t.comment(`last_error: ${n.last_error}`);
  t.equal(n.provision_state, 'service failed', 'service failed');
  t.match(n.last_error, /failed step \{'interface': 'deploy', 'step': 'snapshot'.*\}: creating image e2e-noglance\.bmsnap-index: cannot connect to Glance at http:\/\/127\.0\.0\.1:\d+ \(ConnectFailure\)$/, 'last_error: one line naming the step and the Glance URL (the index image is created first)', { last_error: n.last_error });
  t.equal(n.maintenance, true, 'maintenance set by Ironic (failure during a step)');
  t.equal(n.driver_internal_info.bmsnap_snapshot, undefined, 'no image was created, nothing recorded');
  t.comment(`glance-down case: ${secs(t0)} s`);
});

// ------------------------------------------------------------------------------------------------
// No secret anywhere: every agent token, every Keystone token (fernet: "gAAAAA" + base64url, so
// also the Glance token each agent got in its command parameters), every password.

if (stackUp) await t.test('no token or password in node fields or any log', async (t) => {
  const fernet = /gAAAAA[A-Za-z0-9_-]{60,}/;
  const sample = (await stack.keystone!.token('admin', stack.keystone!.admin.password, 'admin')).token;
  t.ok(fernet.test(sample), 'the pattern matches a real token of this Keystone');
  const secrets = [...harness.boots.map((b) => b.token).filter((x) => x.length >= 32), ...(await stack.passwords()), ...userPasswords];
  t.ok(secrets.length >= harness.boots.length + 5, `${secrets.length} secrets to look for (${harness.boots.length} agent tokens, 5 passwords)`);
  const nodes = await stack.baremetal(['node', 'list', '--long'], { json: true });
  const texts: [string, string][] = [['`baremetal node list --long -f json`', nodes.stdout]];
  for (const f of await readdir(join(dir, 'log'))) texts.push([`log/${f}`, await readFile(join(dir, 'log', f), 'utf8')]);
  texts.push(['keystone/manage.log', await readFile(join(dir, 'keystone/manage.log'), 'utf8').catch(() => '')]);
  for (const [what, text] of texts) {
    // a failure shows where, with the secret itself masked
    t.notOk(fernet.test(text), `no Keystone token in ${what}`);
    const hits = text.split('\n').flatMap((l, i) => secrets.some((x) => l.includes(x)) ? [`${i + 1}: ${secrets.reduce((m, x) => m.split(x).join('***'), l).slice(0, 400)}`] : []);
    t.same(hits, [], `no agent token or password in ${what}`);
  }
});

completed = true;
