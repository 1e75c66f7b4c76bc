// Deploying a delta through a REAL Ironic 29 (test/stack/: Debian trixie's ironic-api and
// ironic-conductor with the bmsnap plugin, Glance 30 and Keystone, on 127.0.0.1), issue 12:
//   - a bootable disk (test/lib/bootable-disk.sh: GRUB, ESP, ext4 root whose marker program
//     prints the sha256 of /etc/bmsnap-payload), given 600 data files, is snapshotted in full
//     with its index; then 1 % of the files and the payload change, and a delta goes into Glance
//     with --parent: at most 5 % of the full image;
//   - a node (bmsnap-fake-hardware, deploy interface bmsnap) is deployed with the DELTA as its
//     image: the conductor resolves the chain, mints a read-only credential limited to the
//     chain's images and hands it to the agent in the command parameters only; the agent (the
//     TypeScript agent, started by the harness on the bmsnap-fake boot's "ramdisk boot") writes
//     the chain onto the node's disk (a loop device full of stale bytes), used clusters only;
//   - the node goes active; the disk holds every filesystem of the changed source file by file
//     and BOOTS in a VM, printing the changed payload's hash; the credential is gone; no token in
//     node fields or logs.
//   - on Glance 30 too: the delta flattened (its tree equals the changed source), and a parent whose
//     index digest no longer matches refused in one line with nothing left, or taken in full with
//     --or-full.
import t from 'tap';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { attachLoop, REPO_ROOT, run, withPartitionMount, type Loop, type TestDisk } from '../lib/disks.js';
import { digestAll } from '../lib/verify.js';
import { pickPortIn } from '../lib/ports.js';
import { bmsnap } from '../lib/cli.js';
import { FakeBootWatcher, IronicStack, secs } from '../lib/ironic-stack.js';
import { finishStackRun, requireRootAndAgent, tsAgentBooter, type Ramdisk } from '../lib/ts-ramdisk.js';
import { Vm } from '../lib/vm.js';

requireRootAndAgent(t, 'chroot, loop devices, mounts');

const taken = new Set<number>();
const pickPort = (lo: number, hi: number) => pickPortIn(lo, hi, taken);
const started = Date.now();
let completed = false;
const work = await mkdtemp(join(tmpdir(), 'bmsnap-ironic-deploy-'));
t.comment(`work dir ${work}`);
const stack = new IronicStack({
  dir: join(work, 'stack'),
  ironicPort: await pickPort(16300, 16329),
  glancePort: await pickPort(19400, 19429),
  keystonePort: await pickPort(15100, 15199),
  ironicConf: '[conductor]\ndeploy_callback_timeout = 120\n',
});
await mkdir(join(work, 'cmdlines'), { recursive: true });
const harness = new FakeBootWatcher<Ramdisk>(stack.bootDir, join(work, 'cmdlines'),
  tsAgentBooter({ logDir: join(stack.dir, 'log'), ports: [19800, 19899], taken }));
const loops: Loop[] = [];
const disks: TestDisk[] = [];
const vms: Vm[] = [];
t.teardown(async () => {
  for (const vm of vms) await vm.stop();
  for (const l of loops) await l.detach().catch(() => undefined);
  await finishStackRun({ harness, stack, disks, work, keep: !t.passing() || !completed, started });
});

let stackUp = false;
await t.test('stack with the bmsnap plugin and Keystone', async (t) => {
  const err = await stack.start();
  if (err) { t.fail('stack start', { output: err }); return; }
  stackUp = true;
  harness.start();
  t.pass(`stack up after ${secs(started)} s`);
});
if (!stackUp) process.exitCode = 1;

const at = (f: string) => join(work, f);
const source = at('source.raw');
const marker = randomUUID();
let tokenFile = '';
let fullId = '';
let deltaId = '';
let changedPayload = '';
const FILES = 600;

async function glanceCli(args: string[]) {
  return bmsnap([...args, '--glance-url', stack.glance, '--token-file', tokenFile, '--json', '-q']);
}

if (stackUp) await t.test('a bootable disk, its full snapshot, a change, a delta', async (t) => {
  const made = await execa('bash', [join(REPO_ROOT, 'test/lib/bootable-disk.sh'), source, marker], { reject: false, stdin: 'ignore' });
  t.equal(made.exitCode, 0, 'bootable-disk.sh exits 0', { stderr: String(made.stderr) });
  const ks = stack.keystone!;
  tokenFile = at('token');
  await writeFile(tokenFile, (await ks.token('admin', ks.admin.password, 'admin')).token, { mode: 0o600 });
  await withPartitionMount(source, 3, 'rw', async (dir) => {
    await mkdir(join(dir, 'srv/data'), { recursive: true });
    for (let i = 0; i < FILES; i++) await writeFile(join(dir, `srv/data/f${i}`), randomBytes(64 * 1024));
  });
  const full = await glanceCli(['image', source, '--glance', 'deploy-full', '--with-index']);
  t.equal(full.exitCode, 0, 'full snapshot with its index into Glance', { stderr: full.stderr });
  fullId = JSON.parse(full.stdout).glance.imageId;

  await withPartitionMount(source, 3, 'rw', async (dir) => {
    const payload = randomBytes(300_000);
    await writeFile(join(dir, 'etc/bmsnap-payload'), payload);
    changedPayload = createHash('sha256').update(payload).digest('hex');
    for (let i = 0; i < FILES / 100; i++) await writeFile(join(dir, `srv/data/f${i * 7}`), randomBytes(64 * 1024));
  });
  const delta = await glanceCli(['image', source, '--glance', 'deploy-delta', '--parent', fullId]);
  t.equal(delta.exitCode, 0, 'delta against the full image', { stderr: delta.stderr });
  const md = JSON.parse(delta.stdout);
  deltaId = md.glance.imageId;
  const fullBytes = JSON.parse(full.stdout).bytesWritten as number;
  t.ok(md.bytesWritten <= 0.05 * fullBytes, `the delta (${md.bytesWritten} bytes) is at most 5 % of the full image (${fullBytes})`);
  const dimg: any = await (await stack.glanceFetch(`/v2/images/${deltaId}`)).json();
  t.equal(dimg.bmsnap_parent_image, fullId, 'the delta names its parent in its properties');
  t.equal((await qemuImgInfoOf(deltaId))['backing-filename'], undefined, 'and has no backing-file string');
});

/** qemu-img info of Glance image ID (downloaded). */
async function qemuImgInfoOf(id: string): Promise<Record<string, unknown>> {
  const file = at(`${id}.qcow2`);
  await writeFile(file, Buffer.from(await (await stack.glanceFetch(`/v2/images/${id}/file`)).arrayBuffer()));
  return JSON.parse(await run('qemu-img', ['info', '--output=json', file]));
}

/** Glance images named NAME (hidden ones too). */
async function named(name: string): Promise<any[]> {
  const res = await stack.glanceFetch(`/v2/images?name=${encodeURIComponent(name)}&os_hidden=true`);
  const visible = await stack.glanceImages(name);
  return [...visible, ...((await res.json()) as { images: any[] }).images];
}

if (deltaId) await t.test('on Glance 30: flatten the delta, bmsnap deploy it; a parent whose index is damaged or gone', async (t) => {
  const flat = await glanceCli(['flatten', deltaId, '--glance', 'deploy-flat']);
  t.equal(flat.exitCode, 0, 'bmsnap flatten DELTA --glance', { stderr: flat.stderr });
  const mf = JSON.parse(flat.stdout);
  const raw = at('flat.raw');
  const dl = await stack.glanceFetch(`/v2/images/${mf.glance.imageId}/file`);
  await writeFile(at('flat.qcow2'), Buffer.from(await dl.arrayBuffer()));
  await run('qemu-img', ['convert', '-O', 'raw', at('flat.qcow2'), raw]);
  const [want, got] = [await digestAll(source), await digestAll(raw)];
  t.same([...got.keys()], [...want.keys()], 'the flat image: the same filesystems');
  for (const [i, d] of want) t.same(got.get(i)?.entries, d.entries, `flat image, partition ${i} (${d.fs}): the tree of the changed source`);
  const fimg: any = await (await stack.glanceFetch(`/v2/images/${mf.glance.imageId}`)).json();
  t.equal(fimg.bmsnap_parent_image, undefined, 'the flat image stands alone (no parent)');

  // the same chain written straight from Glance by the CLI, onto a plain file
  await run('truncate', ['-s', '300M', at('cli-target.raw')]);
  const dep = await bmsnap(['deploy', deltaId, '--to', at('cli-target.raw'), '--glance-url', stack.glance, '--token-file', tokenFile, '--json', '-q']);
  t.equal(dep.exitCode, 0, 'bmsnap deploy DELTA --to FILE (from Glance)', { stderr: dep.stderr });
  t.same(JSON.parse(dep.stdout).clustersFrom.length, 2, 'clusters from the delta and its parent');
  const onFile = await digestAll(at('cli-target.raw'));
  for (const [i, d] of want) t.same(onFile.get(i)?.entries, d.entries, `bmsnap deploy, partition ${i} (${d.fs}): the tree of the changed source`);

  // a parent whose recorded index digest no longer matches its index image: one line, nothing made
  const base = await glanceCli(['image', source, '--glance', 'deploy-base2', '--with-index']);
  const baseId = JSON.parse(base.stdout).glance.imageId as string;
  const patch = await stack.glanceFetch(`/v2/images/${baseId}`, { method: 'PATCH', headers: { 'content-type': 'application/openstack-images-v2.1-json-patch' },
    body: JSON.stringify([{ op: 'replace', path: '/bmsnap_index_sha256', value: '0'.repeat(64) }]) });
  t.equal(patch.status, 200, 'the parent\'s recorded index digest changed behind bmsnap\'s back');
  const bad = await glanceCli(['image', source, '--glance', 'deploy-bad-parent', '--parent', baseId]);
  t.equal(bad.exitCode, 1, 'a delta on it is refused');
  t.match(bad.stderr.trim(), /^bmsnap: the cluster index of parent image \S+ \(image \S+\) has SHA-256 \S+, the image records 000000000000…: it was changed or damaged$/, 'in one line that says so', { stderr: bad.stderr });
  t.same(await named('deploy-bad-parent'), [], 'no image left behind');
  t.same(await named('deploy-bad-parent.bmsnap-index'), [], 'no index image left behind');
  const orFull = await glanceCli(['image', source, '--glance', 'deploy-or-full', '--parent', baseId, '--or-full']);
  t.equal(orFull.exitCode, 0, '--or-full: a full image instead, as asked', { stderr: orFull.stderr });
  const mo = JSON.parse(orFull.stdout);
  t.match(mo.warnings.join('\n'), /changed or damaged; a full image was taken instead \(--or-full\)/, 'the manifest says why');
  const oimg: any = await (await stack.glanceFetch(`/v2/images/${mo.glance.imageId}`)).json();
  t.equal(oimg.bmsnap_parent_image, undefined, 'it is a full image (no parent)');
  t.match(oimg.bmsnap_index_image, /^[0-9a-f-]{36}$/, 'with its own index');
});

/** A 1 GiB target disk (larger than the source), its first 600 MiB stale bytes, on a loop device. */
async function staleTarget(name: string): Promise<{ file: string; dev: string }> {
  const file = at(name);
  await run('bash', ['-c', `yes BMSNAP-STALE-TARGET | head -c ${600 * 2 ** 20} > ${file} && truncate -s 1G ${file}`]);
  const loop = await attachLoop(file);
  loops.push(loop);
  return { file, dev: loop.dev };
}

/** The ironic user's application credentials made for deploys. */
async function deployCredentials(): Promise<{ name: string; access_rules: { method: string; path: string }[] }[]> {
  const ks = stack.keystone!;
  const users = (await ks.api('GET', '/users?name=ironic')) as { users: { id: string }[] };
  const creds = (await ks.api('GET', `/users/${users.users[0]!.id}/application_credentials`)) as { application_credentials: { name: string; access_rules: { method: string; path: string }[] }[] };
  return creds.application_credentials.filter((c) => c.name.startsWith('bmsnap-deploy-'));
}

if (deltaId) await t.test('baremetal node deploy with the delta: the agent writes the chain, the disk boots', async (t) => {
  const target = await staleTarget('node-disk.raw');
  const uuid = await stack.availableNode('deploy-delta-node', deltaId, target.dev);
  const t0 = Date.now();
  const nBoots = harness.boots.length;
  await stack.baremetal(['node', 'deploy', uuid]);
  const ramdisk = await harness.waitBoot(uuid, nBoots, 120);
  // while the agent writes: one credential, reading the chain's images and the delta's index only
  let rules: string[] = [];
  const during = await (async () => {
    for (let i = 0; i < 300; i++) {
      const c = await deployCredentials();
      if (c.length) return c;
      const n = await stack.getNode(uuid);
      if (!['deploying', 'wait call-back'].includes(n.provision_state)) return c;
      await new Promise((r) => setTimeout(r, 200));
    }
    return [];
  })();
  if (during.length) rules = during[0]!.access_rules.map((r) => `${r.method} ${r.path}`).sort();
  const n = await stack.waitState(uuid, ['active', 'deploy failed'], 300);
  t.comment(`deploy -> ${n.provision_state} in ${secs(t0)} s`);
  t.equal(n.provision_state, 'active', 'node active', { last_error: n.last_error });
  t.equal(n.last_error, null, 'no last_error');
  const delta: any = await (await stack.glanceFetch(`/v2/images/${deltaId}`)).json();
  if (during.length) {
    t.same(rules, [`GET /v2/images/${deltaId}`, `GET /v2/images/${deltaId}/file`, `GET /v2/images/${delta.bmsnap_index_image}/file`,
      `GET /v2/images/${fullId}`, `GET /v2/images/${fullId}/file`].sort(), 'the agent\'s credential reads the chain and the delta\'s index, nothing else');
  } else {
    t.fail('no deploy credential seen while the agent wrote');
  }
  t.same(await deployCredentials(), [], 'the credential is deleted once the write ended');
  const info = n.driver_internal_info.bmsnap_deploy;
  t.match(info, { image_id: deltaId, chain: [deltaId, fullId], state: 'written', device: target.dev }, 'driver_internal_info.bmsnap_deploy: the chain written');
  t.equal(info.credential, undefined, 'no credential id left on the node');
  t.ok(info.bytesWritten > 0 && info.bytesWritten < 0.8 * (await stat(source)).size, `used clusters only (${info.bytesWritten} bytes written)`);
  t.equal(n.instance_info.image_url ?? null, null, 'no conductor-side image cache or URL');

  const want = await digestAll(source);
  const got = await digestAll(target.file);
  t.same([...got.keys()], [...want.keys()], 'the same filesystems');
  for (const [i, d] of want) t.same(got.get(i)?.entries, d.entries, `partition ${i} (${d.fs}): the tree of the changed source, file by file`);
  const verify = await execa('sgdisk', ['-v', target.file], { reject: false });
  t.match(String(verify.stdout), /No problems found/, 'sgdisk -v: the GPT is sound, its backup at the end of the larger disk');

  const vm = new Vm({ name: 'deployed-boot', serialLog: at('deployed-boot.serial.log'), memoryMiB: 512,
    disks: [{ file: target.file, format: 'raw', snapshot: true }], noNetwork: true });
  vms.push(vm);
  const seen = await vm.waitLine(/BMSNAP-MARKER (\S+) ([0-9a-f]{64})/, 240);
  await vm.stop();
  t.equal(seen.match[1], marker, 'the deployed disk boots (the source\'s marker on the console)');
  t.equal(seen.match[2], changedPayload, 'and its root holds the payload as changed after the full snapshot');

  // no token anywhere it could leak
  const show = await stack.baremetal(['node', 'show', uuid], { json: true });
  const tokens = [await readFile(tokenFile, 'utf8'), ramdisk.token].filter((x) => x.length >= 16);
  const logs = await readdir(join(stack.dir, 'log'));
  for (const tok of tokens) {
    t.notOk(show.stdout.includes(tok), 'no token in `baremetal node show`');
    for (const f of logs) t.notOk((await readFile(join(stack.dir, 'log', f), 'utf8')).includes(tok), `no token in log ${f}`);
  }
  completed = true;
});
