// Issue 6, `bmsnap now --mode live`, in qemu (TCG): the busybox "user OS" of
// test/lib/bootable-disk.sh --lvm (root on an LVM volume, /boot and the ESP on plain partitions,
// both mounted read-write by the job) runs the self-contained bundle against a real glance-api
// on the host's 127.0.0.1 (guestfwd only) while a writer churns the root and, once the snapshot
// exists, something writes to /boot (test/lib/inband-live-job.sh). The node never stops: the
// writer goes on through the capture. Then, on the host: the image is active with bmsnap's
// hashes and provenance; every filesystem in it - the LV's ext4 included - is clean (fsck) and
// the LV's journal needs no recovery (the freeze flushed it); the churn files in it are whole;
// the write to /boot that waited for the capture is not in it, but is on the node's disk; the
// disk's LVM metadata is untouched (no snapshot volume was ever added to the VG); and the image
// boots in a fresh VM, showing the file written before the snapshot. A second capture with
// --parent (issue 12) is a small delta on the first, which is then protected. A capture with a
// spare copy-on-write disk too small for the writer fails cleanly (one line, no image left, the
// node unharmed). The freeze time is printed as a `metric` line.
import t from 'tap';
import { execa } from 'execa';
import { copyFile, mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { randomBytes, randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, readOnlyMountOptions, withMount, withReadOnlyWindow } from '../lib/disks.js';
import { buildBundle } from '../lib/bundle.js';
import { startGlance, type LocalGlance } from '../lib/glance.js';
import { pickPortIn } from '../lib/ports.js';
import { convertToRaw, fsckAll, fsckWindow, hashFile, qemuImgCheck } from '../lib/verify.js';
import { GUEST_HOST_IP, Vm } from '../lib/vm.js';
import { TS_AGENT, requireRootAndAgent } from '../lib/ts-ramdisk.js';
import { bootRestored, runAsNobody, runPlain } from '../lib/inband.js';

requireRootAndAgent(t, 'loop devices for the test disk, the bundle cache, apt-get');

const started = Date.now();
const secs = (from: number) => Math.round((Date.now() - from) / 100) / 10;
const metric = (name: string, value: number, unit: string) => t.comment(`metric ${name} = ${value} ${unit}`);
const work = await mkdtemp(join(tmpdir(), 'bmsnap-live-'));
t.comment(`work dir ${work}`);
const vms: Vm[] = [];
let glance: LocalGlance | undefined;
t.teardown(async () => {
  for (const v of vms) await v.stop();
  await glance?.dispose();
  if (t.passing()) await rm(work, { recursive: true, force: true });
  else console.error(`# kept ${work}`);
  console.error(`# total ${secs(started)} s`);
});

const LVM_IMAGE = join(REPO_ROOT, 'test/lib/lvm-image.sh');
/** Byte range of bmsnapvg/root in a raw image, read from the image's own LVM metadata. */
async function lvRange(raw: string): Promise<[number, number]> {
  const r = await execa('bash', [LVM_IMAGE, raw, 'bmsnapvg', 'root'], { stdin: 'ignore' });
  const [o, s] = r.stdout.trim().split(' ').map(Number);
  return [o!, s!];
}

let disk = '';
let jobDisk = '';
let cowDisk = '';
const marker = randomUUID();
const imageName = `live-${marker.slice(0, 8)}`;
const token = `tok-${randomBytes(16).toString('hex')}`;
const fileData = `written-before-snapshot-${randomBytes(8).toString('hex')}`;
let pvHeaderBefore: Buffer = Buffer.alloc(0);
let pvStart = 0;
await t.test('setup: bundle, the node\'s LVM-root disk, Glance, the job disk', async (t) => {
  const bundle = await buildBundle([]);
  t.equal(bundle.exitCode, 0, 'bundle/build.sh exits 0', { stderr: bundle.stderr });
  disk = join(work, 'node.raw');
  const made = await execa('bash', [join(REPO_ROOT, 'test/lib/bootable-disk.sh'), disk, marker, '--lvm'], { reject: false, stdin: 'ignore' });
  t.equal(made.exitCode, 0, 'bootable-disk.sh --lvm exits 0', { stderr: String(made.stderr) });
  // the physical volume's label and metadata area: partition 4 starts at its first MiB
  pvStart = Number((await execa('sgdisk', ['-i', '4', disk])).stdout.match(/First sector: (\d+)/)![1]) * 512;
  pvHeaderBefore = await readRange(disk, pvStart, 2 ** 20);
  glance = await startGlance({ port: await pickPortIn(18700 + Math.floor(Math.random() * 50), 18799) });
  const jobDir = join(work, 'job');
  await mkdir(jobDir);
  await copyFile(bundle.path, join(jobDir, 'bmsnap'));
  await copyFile(join(REPO_ROOT, 'test/lib/inband-live-job.sh'), join(jobDir, 'job.sh'));
  await copyFile(join(REPO_ROOT, 'test/lib/guest-lib.sh'), join(jobDir, 'guest-lib.sh'));
  await writeFile(join(jobDir, 'job.env'),
    `GLANCE_URL=http://${GUEST_HOST_IP}:${glance.port}\nIMAGE_NAME=${imageName}\nOS_TOKEN=${token}\nFILE_DATA=${fileData}\n`);
  jobDisk = join(work, 'job.img');
  await execa('mkfs.ext4', ['-q', '-F', '-L', 'job', '-d', jobDir, jobDisk, '200M']);
  cowDisk = join(work, 'cow.img');
  await execa('truncate', ['-s', '2M', cowDisk]);
});

async function readRange(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, offset);
    return buf;
  } finally {
    await fh.close();
  }
}

const seen: Record<string, RegExpExecArray> = {};
const serialLog = join(work, 'node.serial.log');
let imageId = '';
let deltaId = '';
await t.test('the running node snapshots itself while it writes', async (t) => {
  const vm = new Vm({
    name: 'live-node', serialLog, memoryMiB: 2048,
    disks: [{ file: disk, format: 'raw' }, { file: jobDisk, format: 'raw' }, { file: cowDisk, format: 'raw' }],
    guestForwards: [glance!.port],
  });
  vms.push(vm);
  const steps: [string, RegExp, number][] = [
    ['marker', /BMSNAP-MARKER (\S+) [0-9a-f]{64} machine-id=/, 240],
    ['mounted', /BMSNAP-JOB mounted (\d+) boot filesystems; root on (\S+)/, 120],
    ['refusal', /BMSNAP-JOB refusal (.*)/, 300],
    ['frozen', /BMSNAP-JOB said bmsnap: point-in-time copy of (\S+) taken: frozen for ([\d.]+) s(.*)/, 900],
    ['active', /BMSNAP-JOB said bmsnap: glance image (\S+) active/, 60],
    ['live', /BMSNAP-JOB live rc=(\d+) id=(\S*) writes-before=(\d+) writes-after=(\d+) writes-end=(\d+) started=([\d.]+) ended=([\d.]+)/, 60],
    ['delta', /BMSNAP-JOB delta rc=(\d+) id=(\S*) last=(.*)/, 900],
    ['overflow', /BMSNAP-JOB overflow rc=(\d+) last=(.*)/, 600],
    ['bootWrite', /BMSNAP-JOB boot write tried=([\d.]+) done=([\d.]+)/, 60],
    ['mapper', /BMSNAP-JOB mapper \[(.*)\] loops \[(.*)\]/, 60],
    ['writable', /BMSNAP-JOB boot filesystems writable again/, 60],
    ['done', /BMSNAP-JOB done/, 60],
  ];
  for (const [step, re, timeout] of steps) {
    const got = await vm.waitLine(re, timeout);
    seen[step] = got.match;
    t.comment(`${step}: ${got.text.trim().slice(0, 200)} (${got.seconds.toFixed(1)} s)`);
  }
  await vm.done;
  t.ok(vm.exited, 'the VM powered off');
  t.equal(seen.marker![1], marker, 'the user OS booted (root on LVM)');
  t.same([seen.mounted![1], seen.mounted![2]], ['2', '/dev/mapper/bmsnapvg-root'], '/boot and /boot/efi mounted read-write, / on the LV');
  t.match(seen.refusal![1], /^rc=1 err=bmsnap: --cow-device \/dev\/vda2 is on vda, the disk being imaged: give a spare device$/, 'a copy-on-write device on the imaged disk: refused in one line, exit 1');
  const live = seen.live!;
  t.equal(live[1], '0', 'bmsnap now --mode live exits 0');
  imageId = live[2]!;
  t.equal(seen.active![1], imageId, 'the image id on stdout is the active image');
  t.equal(seen.frozen![1], '/', 'the point-in-time copy is of /');
  t.match(seen.frozen![3], /held for the capture: \/boot frozen, \/boot\/efi read-only/, '/boot frozen, the ESP (vfat cannot freeze) read-only for the capture');
  const [before, after, end] = [Number(live[3]), Number(live[4]), Number(live[5])];
  t.ok(after > before, `the writer went on during the capture (${before} -> ${after} files)`);
  t.ok(end >= after, 'and after it');
  // (tried: when the snapshot's device appeared, /boot already frozen; the write's absence from
  // the image, checked below, is what shows it waited for the whole capture)
  const [tried, done] = [Number(seen.bootWrite![1]), Number(seen.bootWrite![2])];
  const ended = Number(live[7]);
  t.ok(done - tried > 5, `the write to /boot waited (tried at ${tried} s, done at ${done} s, bmsnap ended at ${ended} s of uptime)`);
  t.equal(seen.delta![1], '0', 'a second capture with --parent (issue 12): exit 0', { last: seen.delta![3] });
  deltaId = seen.delta![2]!;
  t.equal(seen.overflow![1], '1', 'a 2 MiB --cow-device for a busy writer: exit 1');
  t.match(seen.overflow![2], /^bmsnap: the copy-on-write store of bmsnapvg-root filled up while the capture ran .*--cow-device.*--mode kexec$/, 'in one line: the store filled up, and what to do');
  t.notMatch(seen.mapper![1], /bmsnap-live/, 'no bmsnap device-mapper device left');
  t.equal((seen.mapper![2] ?? '').trim(), '', 'no loop device left');
  metric('freeze_s', Number(seen.frozen![2]), 's (volumes suspended: snapshot + table swap; TCG, one vCPU)');
  metric('live_capture_s', Math.round((ended - Number(live[6])) * 10) / 10, 's (bmsnap now --mode live, start to image active; TCG; the node runs throughout)');
  const log = await readFile(serialLog, 'utf8');
  t.notOk(log.includes(token), 'the token is not in the serial log');
});

let raw = '';
await t.test('the image: active, verified, clean filesystems, the disk as it was in the freeze', async (t) => {
  if (!imageId) { t.fail('no image id'); return; }
  const img = await glance!.getImage(imageId);
  t.equal(img.status, 'active', 'image active');
  t.equal(img.bmsnap_capture_method, 'inband-live', 'bmsnap_capture_method=inband-live');
  t.match(img.bmsnap_freeze_seconds, /^\d+\.\d{3}$/, 'bmsnap_freeze_seconds recorded');
  t.equal(img.bmsnap_volumes, 'bmsnapvg-root:ext4', 'bmsnap_volumes: the LV and its filesystem');
  t.equal((await glance!.listImages()).filter((i) => i.name === imageName).length, 1, 'exactly one image (no orphans)');
  t.same((await glance!.listImages()).filter((i) => i.name === `${imageName}-overflow`).map((i) => `${i.id} ${i.status}`), [], 'the overflowed capture left no image');
  // the second capture: a delta on the first, holding only what changed meanwhile
  const delta = deltaId ? await glance!.getImage(deltaId) : undefined;
  t.equal(delta?.status, 'active', 'the delta image (now --parent) is active');
  t.equal(delta?.bmsnap_parent_image, imageId, 'it names the first capture as its parent');
  t.ok(delta && typeof delta.size === 'number' && typeof img.size === 'number' && delta.size < img.size / 2, `it is small: ${delta?.size} bytes against ${img.size}`);
  t.equal((await glance!.getImage(imageId)).protected, true, 'the parent is protected from deletion while the delta needs it');
  const qcow = join(work, 'image.qcow2');
  await glance!.downloadImage(imageId, qcow);
  t.equal(await hashFile(qcow, 'sha512'), img.os_hash_value, 'downloaded sha512 = Glance os_hash_value');
  t.ok((await qemuImgCheck(qcow)).clean, 'qemu-img check clean');
  raw = join(work, 'image.raw');
  await convertToRaw(qcow, raw);
  for (const r of await fsckAll(raw)) t.ok(r.ok, `partition ${r.index} (${r.fs ?? 'no filesystem'}): ${r.tool} clean`, { output: r.output });
  const [lvOff, lvSize] = await lvRange(raw);
  const fsck = await fsckWindow(raw, lvOff, lvSize);
  t.ok(fsck.ok && fsck.fs === 'ext4', 'the LV\'s ext4: e2fsck -fn clean', { output: fsck.output });
  const features = await withReadOnlyWindow(raw, lvOff, lvSize, async (dev) => (await execa('dumpe2fs', ['-h', dev], { stderr: 'ignore' })).stdout);
  t.notMatch(features, /needs_recovery/, 'its journal needs no recovery: the freeze flushed it');
  const lvs = await execa('bash', [LVM_IMAGE, raw, 'bmsnapvg', 'root'], { reject: false });
  t.equal(lvs.exitCode, 0, 'the image\'s VG has the root LV');
  t.same(await readRange(raw, pvStart, 2 ** 20), pvHeaderBefore, 'the LVM label and metadata in the image are those of before: no snapshot volume was added');
  t.same(await readRange(disk, pvStart, 2 ** 20), pvHeaderBefore, 'and so are the node\'s own');

  // the root, as the freeze saw it: whole churn files, the file from before
  await withReadOnlyWindow(raw, lvOff, lvSize, (dev) => withMount(dev, readOnlyMountOptions('ext4'), async (root) => {
    t.equal((await readFile(join(root, 'opt/app/before-snapshot'), 'utf8')).trim(), fileData, 'the file written before the snapshot is in the image');
    const churn = (await readdir(join(root, 'var/churn'))).filter((f) => /^f\.\d+$/.test(f));
    t.ok(churn.length >= 1, `${churn.length} churn files in the image`);
    let bad = 0;
    for (const f of churn) {
      const n = f.slice(2);
      const data = await readFile(join(root, 'var/churn', f), 'utf8');
      if (data.length !== 2 ** 20 || data.split('\n').some((l, i, all) => (i < all.length - 1 ? l !== n : !`${n}\n`.startsWith(l)))) bad++;
    }
    t.equal(bad, 0, 'every churn file in the image is whole (1 MiB of its own number)');
    const newest = Math.max(...churn.map((f) => Number(f.slice(2))));
    t.ok(newest < Number(seen.live![4]), `the newest churn file in the image (${newest}) predates the end of the capture (${seen.live![4]})`);
  }));
  // /boot: held still from before the snapshot to the end, so what waited is not in the image
  const bootOff = Number((await execa('sgdisk', ['-i', '3', raw])).stdout.match(/First sector: (\d+)/)![1]) * 512;
  const bootSize = 64 * 2 ** 20;
  for (const [what, file] of [['image', raw], ['node\'s disk', disk]] as const) {
    await withReadOnlyWindow(file, bootOff, bootSize, (dev) => withMount(dev, readOnlyMountOptions('ext4'), async (boot) => {
      const names = await readdir(boot);
      t.ok(names.includes('before-snapshot'), `${what}: /boot has the file written before the snapshot`);
      if (what === 'image') t.notOk(names.includes('during-snapshot'), 'image: not the write that waited for the capture');
      else t.ok(names.includes('during-snapshot') && names.includes('after-snapshot'), 'node\'s disk: that write landed after the capture, and /boot was writable again');
    }));
  }
});

await t.test('the image boots in a fresh VM with the marker and the file', async (t) => {
  if (!raw) { t.fail('no image'); return; }
  const restored = await bootRestored({ work, raw, name: 'live-restored', vms });
  t.equal(restored.marker, marker, 'the snapshot boots (root on its LV) and prints the marker');
  t.equal(restored.file, fileData, 'the file written before the snapshot is there');
});

await t.test('refused for a non-root user, and kexec-only flags refused in live mode', async (t) => {
  const r = await runAsNobody(TS_AGENT, ['now', '--mode', 'live', '--glance', 'x', '--glance-url', 'http://127.0.0.1:1']);
  t.equal(r.exitCode, 1, 'exit status 1');
  t.match(String(r.stderr), /^bmsnap: live mode must run as root \(uid 65534\)[^\n]*$/, 'one line: must run as root');
  const u = await runPlain(TS_AGENT, ['now', '--mode', 'live', '--glance', 'x', '--no-return']);
  t.equal(u.exitCode, 2, 'a kexec flag in live mode: usage error, exit 2');
  t.match(String(u.stderr), /^bmsnap: --no-return: kexec mode only$/, 'one line');
});
