// Issue 5 end to end, in qemu (TCG): the ramdisk built by ramdisk-build/ boots in a VM with a
// bootable test disk attached (read-only), reaches the REAL Ironic 29 and Glance 30 of
// test/stack/ on the host's 127.0.0.1 through user networking (restrict=on; guestfwd to exactly
// the two ports; hostfwd for Ironic's calls back to the agent), and Ironic runs the `snapshot`
// service step (bmsnap plugin). Then the image is downloaded and booted in a fresh VM, which must
// print the disk's marker: the snapshot boots. A second run with `scrub` (issue 7) must leave the
// disk byte-identical while the image loses its per-machine state and, booted, makes a new
// identity. Last, Ironic deploys a delta of a changed copy of the disk onto a blank disk, the agent
// in the ramdisk VM writing the chain, and that disk boots with the change (issue 12). Times and
// sizes are printed as `# metric` lines.
//
// Wiring, as an operator would set it for a ramdisk behind NAT: Ironic's [service_catalog]
// endpoint_override is the address the ramdisk reaches Ironic at (10.0.2.100:PORT) and
// [bmsnap]agent_glance_url the one it reaches Glance at; the boot interface (bmsnap-fake) hands
// the ramdisk parameters to this harness, which boots qemu with them plus console=ttyS0 and
// ipa-advertise-host/-port (the hostfwd Ironic calls back through).
import t, { type Test } from 'tap';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, readOnlyMountOptions, withPartitionMount } from '../lib/disks.js';
import { comparePartitionTables, convertToRaw, hashFile, qemuImgCheck, sha256File } from '../lib/verify.js';
import { pickPortIn } from '../lib/ports.js';
import { FakeBootWatcher, IronicStack, secs, snapshotSteps, tokenOf, waitFor, type Boot } from '../lib/ironic-stack.js';
import { GUEST_HOST_IP, Vm } from '../lib/vm.js';
import { requireRootAndAgent } from '../lib/ts-ramdisk.js';

const BUILD = join(REPO_ROOT, 'ramdisk-build/build.sh');
const BOOTABLE_DISK = join(REPO_ROOT, 'test/lib/bootable-disk.sh');

requireRootAndAgent(t, 'chroot, loop devices, apt-get');

const taken = new Set<number>();
const pickPort = (lo: number, hi: number) => pickPortIn(lo, hi, taken);
const metrics: Record<string, number> = {};
const metric = (name: string, value: number, unit: string) => { metrics[name] = value; t.comment(`metric ${name} = ${value} ${unit}`); };

const started = Date.now();
let completed = false;
const work = await mkdtemp(join(tmpdir(), 'bmsnap-vm-e2e-'));
t.comment(`work dir ${work}`);
const vms: Vm[] = [];

// ------------------------------------------------------------------------------------------------
// 1. The ramdisk, and a disk that boots.

let kernel = '';
let initramfs = '';
await t.test('ramdisk-build: kernel + initramfs', async (t) => {
  const t0 = Date.now();
  const r = await execa('bash', [BUILD, '--quiet'], { reject: false, stdin: 'ignore', env: { NODE_OPTIONS: '' } });
  t.equal(r.exitCode, 0, 'build.sh exits 0', { stderr: String(r.stderr) });
  kernel = /^kernel (\S+)$/m.exec(String(r.stdout))?.[1] ?? '';
  initramfs = /^initramfs (\S+)$/m.exec(String(r.stdout))?.[1] ?? '';
  t.ok(existsSync(kernel) && existsSync(initramfs), 'prints the kernel and initramfs paths', { stdout: String(r.stdout) });
  const info = JSON.parse(await readFile(join(initramfs, '..', 'build-info.json'), 'utf8'));
  const size = (await stat(initramfs)).size;
  t.equal(info.initramfs_sha256, await sha256File(initramfs), 'build-info.json names the initramfs sha256');
  t.ok(size <= 150e6, `compressed initramfs ${(size / 1e6).toFixed(1)} MB <= 150 MB`);
  metric('initramfs_mb', Math.round(size / 1e5) / 10, 'MB compressed');
  metric('initramfs_uncompressed_mb', Math.round(info.uncompressed_bytes / 1e5) / 10, 'MB');
  t.comment(`build (or cache hit) in ${secs(t0)} s`);
});

const marker = randomUUID();
const disk = join(work, 'bootable.raw');
let payloadSha = '';
let machineId = '';
let diskSha = '';
await t.test('a bootable GPT test disk (BIOS boot + ESP + ext4 root, GRUB)', async (t) => {
  const r = await execa('bash', [BOOTABLE_DISK, disk, marker], { reject: false, stdin: 'ignore' });
  t.equal(r.exitCode, 0, 'bootable-disk.sh exits 0', { stderr: String(r.stderr) });
  [payloadSha = '', machineId = ''] = String(r.stdout).trim().split('\n').slice(-2);
  t.match(payloadSha, /^[0-9a-f]{64}$/, 'payload hash printed');
  t.match(machineId, /^[0-9a-f]{32}$/, 'machine id printed');
  diskSha = await sha256File(disk);
});

// ------------------------------------------------------------------------------------------------
// 2. The stack, and "booting the ramdisk" = a qemu VM with Ironic's parameters.

const ironicPort = await pickPort(17000, 17049);
const glancePort = await pickPort(17050, 17099);
const stack = new IronicStack({
  dir: join(work, 'stack'), ironicPort, glancePort,
  ironicConf: [
    '[conductor]', 'service_callback_timeout = 900', '',
    '[service_catalog]', `endpoint_override = http://${GUEST_HOST_IP}:${ironicPort}`, '',
  ].join('\n'),
  bmsnapConf: `agent_glance_url = http://${GUEST_HOST_IP}:${glancePort}`,
});

interface RamdiskVm extends Boot { vm: Vm; agentPort: number }
/** The disk a node's ramdisk VM gets (default: the bootable source disk, read-only). */
const vmDisks = new Map<string, { file: string; format: 'raw' }>();

async function bootVm(uuid: string, _file: string, content: string, i: number): Promise<RamdiskVm> {
  const agentPort = await pickPort(17100, 17199);
  // The first boot configures its NIC by DHCP, later ones from a static ip= parameter (as an
  // operator would set in kernel_append_params on a network without DHCP).
  const staticIp = i > 1 ? ` ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off` : '';
  const append = `console=ttyS0 panic=-1 quiet ${content.trim()} ipa-advertise-host=127.0.0.1 ipa-advertise-port=${agentPort} ipa-listen-port=${agentPort}${staticIp}`;
  const vm = new Vm({
    name: `ramdisk-${i}`, serialLog: join(work, `ramdisk-${i}.serial.log`), memoryMiB: 1536,
    kernel, initrd: initramfs, append,
    disks: [vmDisks.get(uuid) ?? { file: disk, format: 'raw', readOnly: true }],
    guestForwards: [ironicPort, glancePort], hostForwards: [agentPort],
  });
  vms.push(vm);
  const r: RamdiskVm = { uuid, token: tokenOf(content), cmdline: content, vm, agentPort, exited: false, done: vm.done, kill: (s) => vm.kill(s) };
  void vm.done.then(() => { r.exited = true; taken.delete(agentPort); });
  return r;
}

await mkdir(join(work, 'cmdlines'), { recursive: true });
const harness = new FakeBootWatcher<RamdiskVm>(stack.bootDir, join(work, 'cmdlines'), bootVm);

t.teardown(async () => {
  await harness.stop();
  for (const vm of vms) await vm.stop();
  const err = await stack.stop();
  if (err) console.error(`stack stop: ${err}`);
  await writeFile(join(work, 'metrics.json'), JSON.stringify(metrics, null, 2)).catch(() => undefined);
  if (process.env.BMSNAP_KEEP_STACK === '1' || !t.passing() || !completed) console.error(`# kept ${work}`);
  else await rm(work, { recursive: true, force: true });
  console.error(`# total ${secs(started)} s`);
});

let stackUp = false;
if (kernel && payloadSha) await t.test('stack with the bmsnap plugin', async (t) => {
  const err = await stack.start();
  if (err) { t.fail('stack start', { output: err }); return; }
  stackUp = true;
  harness.start();
  t.pass(`stack up after ${secs(started)} s`);
});

// ------------------------------------------------------------------------------------------------
// 3. The snapshot service step, with the agent in the VM.

let imageId = '';
if (stackUp) await t.test('snapshot service step: ramdisk VM -> Glance', async (t) => {
  const uuid = await stack.activeNode('vm-node');
  const nBoots = harness.boots.length;
  const svc = Date.now();
  await stack.baremetal(['node', 'service', uuid, '--service-steps', snapshotSteps('vm-snap', '/dev/vda')]);
  const ramdisk = await harness.waitBoot(uuid, nBoots, 120);
  const vm = ramdisk.vm;
  t.pass(`Ironic "booted the ramdisk" ${secs(svc)} s after the service request`);

  const init = await vm.waitLine(/bmsnap-ramdisk: starting the agent/, 180);
  metric('ramdisk_boot_to_agent_s', Math.round(init.seconds * 10) / 10, 's (qemu start -> agent started)');
  const net = await vm.waitLine(/bmsnap-ramdisk: network (\S+) (\S+)/, 1);
  t.match(net.match[2], /^10\.0\.2\.15\//, `DHCP address on the console: ${net.text}`);
  const beat = await vm.waitLine(/first heartbeat accepted by Ironic/, 180);
  metric('ramdisk_boot_to_first_heartbeat_s', Math.round(beat.seconds * 10) / 10, 's (qemu start -> first heartbeat)');

  const n = await stack.waitState(uuid, ['active', 'service failed'], 900);
  metric('snapshot_step_s', secs(svc), 's (node service -> node active)');
  t.equal(n.provision_state, 'active', 'node back to active', { last_error: n.last_error });
  t.equal(n.last_error, null, 'no last_error');
  const info = n.driver_internal_info.bmsnap_snapshot;
  t.match(info, { image_id: String, state: 'active' }, 'driver_internal_info.bmsnap_snapshot: active image');
  imageId = info?.image_id ?? '';
  await waitFor('the ramdisk VM to be powered off', 60, async () => ramdisk.exited);
  t.ok(ramdisk.exited, 'Ironic tore the ramdisk down (the VM was stopped)');
  t.equal(await sha256File(disk), diskSha, 'source disk unchanged (and it was attached read-only)');

  // the token: nowhere on the node or in the console log
  const show = await stack.baremetal(['node', 'show', uuid], { json: true });
  t.notOk(show.stdout.includes(ramdisk.token), 'agent token not in `baremetal node show`');
  const serial = await readFile(vm.opts.serialLog, 'utf8');
  t.ok(serial.includes('first heartbeat accepted'), 'serial log captured');
  t.notOk(serial.includes(ramdisk.token), 'agent token not on the console (quiet kernel, agent logs redact it)');
});

// ------------------------------------------------------------------------------------------------
// 4. The snapshot boots.

const MARKER_LINE = /BMSNAP-MARKER (\S+) ([0-9a-f]{64}) machine-id=(\S*) regenerated=\[([^\]]*)\]/;

/** Downloads image ID, checks it, boots it in a fresh VM; the marker line's fields and the raw copy. */
async function downloadAndBoot(t: Test, id: string, label: string): Promise<{ marker: string; payload: string; machineId: string; regenerated: string; raw: string }> {
  const img: any = await (await fetch(`${stack.glance}/v2/images/${id}`)).json();
  t.equal(img.status, 'active', `${label}: Glance image active`);
  const qcow = join(work, `${label}.qcow2`);
  const dl = await fetch(`${stack.glance}/v2/images/${id}/file`);
  t.equal(dl.status, 200, `${label}: download`);
  await writeFile(qcow, Buffer.from(await dl.arrayBuffer()));
  t.equal(await hashFile(qcow, 'sha512'), img.os_hash_value, `${label}: downloaded sha512 = Glance os_hash_value`);
  const check = await qemuImgCheck(qcow);
  t.ok(check.clean, `${label}: qemu-img check clean`, { report: check.report });
  const raw = join(work, `${label}.raw`);
  await convertToRaw(qcow, raw);
  t.same(await comparePartitionTables(disk, raw), [], `${label}: partition table identical to the source`);

  const vm = new Vm({ name: `${label}-boot`, serialLog: join(work, `${label}-boot.serial.log`), memoryMiB: 512,
    disks: [{ file: qcow, format: 'qcow2', snapshot: true }], noNetwork: true });
  vms.push(vm);
  const seen = await vm.waitLine(MARKER_LINE, 240);
  metric(`${label}_boot_to_marker_s`, Math.round(seen.seconds * 10) / 10, 's (firmware -> GRUB -> kernel -> marker)');
  await vm.stop();
  return { marker: seen.match[1]!, payload: seen.match[2]!, machineId: seen.match[3]!, regenerated: seen.match[4]!, raw };
}

if (imageId) await t.test('the snapshot boots in a fresh VM', async (t) => {
  const b = await downloadAndBoot(t, imageId, 'snapshot');
  t.equal(b.marker, marker, 'the booted snapshot prints the source disk\'s marker');
  t.equal(b.payload, payloadSha, 'and the payload file on its root has the source\'s hash');
  t.equal(b.machineId, machineId, 'a plain snapshot keeps the machine id (an exact copy)');
  t.equal(b.regenerated, '', 'nothing had to be regenerated');
  await rm(b.raw, { force: true });
});

// ------------------------------------------------------------------------------------------------
// 5. Scrub: per-machine state removed from the IMAGE through a copy-on-write overlay in the
//    ramdisk; the disk stays byte-identical; the scrubbed image boots and regenerates its identity.

if (imageId) await t.test('snapshot with scrub: a shareable image, the disk untouched', async (t) => {
  const uuid = (await stack.getNode('vm-node')).uuid as string;
  const svc = Date.now();
  await stack.baremetal(['node', 'service', uuid, '--service-steps',
    snapshotSteps('vm-snap-scrubbed', '/dev/vda', { scrub: true, scrub_paths: ['/opt/app/secrets.env'] })]);
  const n = await stack.waitState(uuid, ['active', 'service failed'], 900);
  metric('scrubbed_snapshot_step_s', secs(svc), 's (node service -> node active)');
  const second = harness.boots.at(-1)!;
  const net = await second.vm.waitLine(/bmsnap-ramdisk: network (\S+) (\S+) .*static/, 1).catch(() => undefined);
  t.ok(net, `this boot configured its NIC from ip= (static): ${net?.text ?? 'no such console line'}`);
  t.equal(n.provision_state, 'active', 'node back to active', { last_error: n.last_error });
  if (n.provision_state !== 'active') return;
  const id = n.driver_internal_info.bmsnap_snapshot?.image_id as string;
  t.ok(id && id !== imageId, 'a new image');
  t.equal(await sha256File(disk), diskSha, 'source disk byte-identical after the scrub');
  const img: any = await (await fetch(`${stack.glance}/v2/images/${id}`)).json();
  t.match(img.bmsnap_scrubbed, /ssh-hostkeys/, 'image property bmsnap_scrubbed lists the operations');

  const b = await downloadAndBoot(t, id, 'scrubbed');
  // What the image holds, read on the host from its root filesystem (ext4, partition 3).
  await withPartitionMount(b.raw, 3, readOnlyMountOptions('ext4'), async (root) => {
    const gone = (p: string) => t.notOk(existsSync(join(root, p)), `image: ${p} removed`);
    gone('etc/ssh/ssh_host_ed25519_key'); gone('etc/ssh/ssh_host_ed25519_key.pub'); gone('root/.bash_history');
    gone('var/log/syslog.1'); gone('var/lib/cloud/instance'); gone('var/lib/cloud/instances/i-0001');
    gone('var/lib/dhcp/dhclient.eth0.leases'); gone('tmp/build.log'); gone('opt/app/secrets.env');
    t.equal((await stat(join(root, 'etc/machine-id'))).size, 0, 'image: /etc/machine-id emptied');
    t.equal((await stat(join(root, 'var/log/syslog'))).size, 0, 'image: /var/log/syslog emptied');
    t.equal(await readFile(join(root, 'opt/app/config'), 'utf8'), 'keep me\n', 'image: other files kept');
    t.equal(await readFile(join(root, 'etc/ssh/sshd_config'), 'utf8'), 'Port 22\n', 'image: sshd_config kept');
  });
  t.equal(b.marker, marker, 'the scrubbed image boots (marker printed)');
  t.equal(b.payload, payloadSha, 'with the payload intact');
  t.match(b.machineId, /^[0-9a-f]{32}$/, 'it made itself a machine id');
  t.not(b.machineId, machineId, 'a NEW machine id');
  t.equal(b.regenerated, 'machine-id hostkey', 'machine id and host key regenerated at first boot');
  await rm(b.raw, { force: true });
});

// ------------------------------------------------------------------------------------------------
// 6. Deploy a delta (issue 12): a copy of the disk, changed after its full snapshot, goes into
//    Glance as a delta; Ironic deploys it with the bmsnap deploy interface onto a blank, stale
//    disk, the agent in the ramdisk VM writing the chain; the disk then boots with the change.

if (stackUp) await t.test('deploy a delta: the ramdisk VM writes the chain, the disk boots with the change', async (t) => {
  const src = join(work, 'deploy-src.raw');
  await execa('cp', ['--sparse=always', disk, src]);
  const cli = async (args: string[]) => {
    const r = await execa('node', [join(REPO_ROOT, 'dist/agent/src/cli/main.js'), ...args, '--glance-url', stack.glance, '--json', '-q'], { reject: false, stdin: 'ignore', env: { NODE_OPTIONS: '' } });
    t.equal(r.exitCode, 0, `bmsnap ${args.slice(0, 4).join(' ')}`, { stderr: String(r.stderr) });
    return JSON.parse(String(r.stdout) || '{}');
  };
  const full = await cli(['image', src, '--glance', 'vm-deploy-full', '--with-index']);
  let payload = '';
  await withPartitionMount(src, 3, 'rw', async (root) => {
    const bytes = randomBytes(200_000);
    await writeFile(join(root, 'etc/bmsnap-payload'), bytes);
    payload = createHash('sha256').update(bytes).digest('hex');
  });
  const delta = await cli(['image', src, '--glance', 'vm-deploy-delta', '--parent', full.glance.imageId]);
  t.ok(delta.bytesWritten < full.bytesWritten / 5, `a delta of ${delta.bytesWritten} bytes (full: ${full.bytesWritten})`);

  const target = join(work, 'deploy-target.raw');
  await execa('bash', ['-c', `yes BMSNAP-STALE | head -c ${300 * 2 ** 20} > ${target} && truncate -s 512M ${target}`]);
  const uuid = await stack.availableNode('vm-deploy-node', delta.glance.imageId, '/dev/vda');
  vmDisks.set(uuid, { file: target, format: 'raw' });
  const t0 = Date.now();
  await stack.baremetal(['node', 'deploy', uuid]);
  const n = await stack.waitState(uuid, ['active', 'deploy failed'], 900);
  metric('deploy_delta_s', secs(t0), 's (node deploy -> node active, ramdisk boot included)');
  t.equal(n.provision_state, 'active', 'node active', { last_error: n.last_error });
  t.match(n.driver_internal_info.bmsnap_deploy, { chain: [delta.glance.imageId, full.glance.imageId], state: 'written', device: '/dev/vda' }, 'the agent in the VM wrote the chain onto /dev/vda');
  for (const b of harness.boots.filter((x) => x.uuid === uuid)) { b.kill('SIGTERM'); await b.done.catch(() => undefined); }

  const vm = new Vm({ name: 'deployed-boot', serialLog: join(work, 'deployed-boot.serial.log'), memoryMiB: 512,
    disks: [{ file: target, format: 'raw', snapshot: true }], noNetwork: true });
  vms.push(vm);
  const seen = await vm.waitLine(MARKER_LINE, 240);
  metric('deployed_boot_to_marker_s', Math.round(seen.seconds * 10) / 10, 's');
  await vm.stop();
  t.equal(seen.match[1], marker, 'the deployed disk boots (the source\'s marker)');
  t.equal(seen.match[2], payload, 'with the payload as changed after the full snapshot');
  t.equal(await sha256File(disk), diskSha, 'the original source disk is unchanged');
  await rm(src, { force: true });
  await rm(target, { force: true });
});

metric('total_s', secs(started), 's (this test, stack start included)');
completed = true;
