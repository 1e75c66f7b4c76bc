// Issue 6, "zero footprint", in qemu (TCG): the self-contained `bmsnap` bundle runs on a node
// whose OS is busybox alone (no libc, no node: test/lib/bootable-disk.sh), images that node's own
// disk, root mounted, into a real Glance on the host's 127.0.0.1 (user networking, restrict=on,
// guestfwd to exactly Glance's port), and leaves the OS as it found it: the package database and
// a hash of every entry of the root tree outside /tmp /proc /sys /dev /run are identical before
// and after, no temp dir is left, and the image is active in Glance. The guest side is
// test/lib/footprint-job.sh, run by the disk's marker from a second (job) disk.
import t, { type Test } from 'tap';
import { execa } from 'execa';
import { copyFile, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../lib/disks.js';
import { buildBundle } from '../lib/bundle.js';
import { startGlance, type LocalGlance } from '../lib/glance.js';
import { pickPortIn } from '../lib/ports.js';
import { comparePartitionTables, convertToRaw, hashFile, qemuImgCheck } from '../lib/verify.js';
import { GUEST_HOST_IP, Vm } from '../lib/vm.js';
import { requireRootAndAgent } from '../lib/ts-ramdisk.js';

requireRootAndAgent(t, 'loop devices for the test disk, the bundle cache, apt-get');

const started = Date.now();
const secs = (from: number) => Math.round((Date.now() - from) / 100) / 10;
const metric = (t: Test, name: string, value: number, unit: string) => t.comment(`metric ${name} = ${value} ${unit}`);
const work = await mkdtemp(join(tmpdir(), 'bmsnap-footprint-'));
t.comment(`work dir ${work}`);
let vm: Vm | undefined;
let glance: LocalGlance | undefined;
// (cleaned up at the end, not in t.teardown, which would end the root test while it awaits; qemu
// and glance-api are killed at exit whatever happens, and the work dir is kept if anything failed)
async function cleanUp(): Promise<void> {
  await vm?.stop();
  await glance?.dispose();
  if (t.passing()) await rm(work, { recursive: true, force: true });
  else console.error(`# kept ${work}`);
  console.error(`# total ${secs(started)} s`);
}

const bundle = await buildBundle();
const disk = join(work, 'node.raw');
const marker = randomUUID();
const made = await execa('bash', [join(REPO_ROOT, 'test/lib/bootable-disk.sh'), disk, marker], { reject: false, stdin: 'ignore' });
await t.test('the bundle and the node\'s disk', async (t) => {
  t.equal(bundle.exitCode, 0, 'bundle/build.sh exits 0', { stderr: bundle.stderr });
  if (bundle.path) metric(t, 'bundle_mib', Math.round((await stat(bundle.path)).size / 104857.6) / 10, 'MiB');
  t.equal(made.exitCode, 0, 'bootable-disk.sh exits 0', { stderr: String(made.stderr) });
});
if (!bundle.path || made.exitCode !== 0) { await cleanUp(); process.exit(1); }

glance = await startGlance({ port: await pickPortIn(18600 + Math.floor(Math.random() * 50), 18699) });
const imageName = `footprint-${marker.slice(0, 8)}`;

// the job disk: the bundle as a researcher would have downloaded it, the guest script, settings
const jobDir = join(work, 'job');
await mkdir(jobDir);
await copyFile(bundle.path, join(jobDir, 'bmsnap'));
await copyFile(join(REPO_ROOT, 'test/lib/footprint-job.sh'), join(jobDir, 'job.sh'));
await copyFile(join(REPO_ROOT, 'test/lib/guest-lib.sh'), join(jobDir, 'guest-lib.sh'));
await writeFile(join(jobDir, 'job.env'), `GLANCE_URL=http://${GUEST_HOST_IP}:${glance.port}\nIMAGE_NAME=${imageName}\n`);
const jobDisk = join(work, 'job.img');
await execa('mkfs.ext4', ['-q', '-F', '-L', 'job', '-d', jobDir, jobDisk, '160M']);
const jobFile = async (name: string) => String((await execa('debugfs', ['-R', `cat /${name}`, jobDisk], { stdin: 'ignore' })).stdout);

const job: Record<string, string> = {};
await t.test('the bundle images its own node in a VM and leaves no trace', async (t) => {
  vm = new Vm({
    name: 'footprint', serialLog: join(work, 'footprint.serial.log'), memoryMiB: 1536,
    disks: [{ file: disk, format: 'raw' }, { file: jobDisk, format: 'raw' }],
    guestForwards: [glance!.port],
  });
  const m = await vm.waitLine(/BMSNAP-MARKER (\S+) [0-9a-f]{64} machine-id=/, 240);
  t.equal(m.match[1], marker, 'the user OS booted (its marker line is unchanged)');
  for (const step of ['network', 'before', 'version', 'image', 'after', 'leftovers']) {
    const l = await vm.waitLine(new RegExp(`BMSNAP-JOB ${step} (.*)`), step === 'image' ? 900 : 300);
    job[step] = l.match[1]!;
    t.comment(`${step}: ${job[step]} (${l.seconds.toFixed(1)} s after qemu start)`);
  }
  await vm.waitLine(/BMSNAP-JOB done/, 120);
  await vm.done;
  t.ok(vm.exited, 'the VM powered off');
});

await t.test('footprint: identical before and after', async (t) => {
  t.match(job.network, /^10\.0\.2\.15\//, 'the node had a DHCP address');
  t.match(job.version, /^rc=0 .*out=bmsnap \d+\.\d+\.\d+/, '`bmsnap --version` ran (no node, no libc on the node)');
  t.match(job.image, /^rc=0 /, '`bmsnap image /dev/vda --glance` exited 0', { log: await jobFile('bmsnap.log').catch(() => '') });
  const field = (line: string | undefined, k: string) => new RegExp(`${k}=(\\S+)`).exec(line ?? '')?.[1];
  const before = job.before;
  const after = job.after;
  t.ok(Number(field(before, 'entries')) > 30, `the tree listing has ${field(before, 'entries')} entries`);
  for (const [k, what] of [['tree', 'root tree (names, types, modes, owners, sizes, mtimes, ctimes, sha256)'],
    ['pkg', 'package database (dpkg -l, /etc and /var/lib files)'], ['tmp', '/tmp entries'], ['shm', '/dev/shm entries']] as const) {
    if (field(before, k) !== undefined && field(before, k) === field(after, k)) { t.pass(`${what}: identical`); continue; }
    for (const when of ['before', 'after']) await writeFile(join(work, `${when}.${k}`), await jobFile(`${when}.${k}`));
    const d = await execa('diff', ['-u', join(work, `before.${k}`), join(work, `after.${k}`)], { reject: false });
    t.fail(`${what}: changed`, { diff: String(d.stdout).slice(0, 4000) });
  }
  t.equal(job.leftovers, '0', 'no bmsnap-bundle-* directory left in /tmp or /dev/shm');
  const seconds = (line: string | undefined) => Number(field(line, 'seconds'));
  metric(t, 'guest_version_s', seconds(job.version), 's (TCG: unpack 100+ MiB with busybox gzip/tar + node start + clean-up)');
  metric(t, 'guest_image_s', seconds(job.image), 's (TCG: unpack + image the 256 MiB disk into Glance + clean-up)');
});

await t.test('the image is in Glance, active, and a valid copy of the disk', async (t) => {
  const images = (await glance!.listImages()).filter((i) => i.name === imageName);
  t.equal(images.length, 1, 'one image with the name given');
  const img = images[0];
  if (!img) return;
  t.equal(img.status, 'active', 'status active');
  t.equal(img.disk_format, 'qcow2', 'disk_format qcow2');
  const qcow = join(work, 'image.qcow2');
  await glance!.downloadImage(img.id, qcow);
  t.equal(await hashFile(qcow, 'sha512'), img.os_hash_value, 'downloaded sha512 = Glance os_hash_value');
  const check = await qemuImgCheck(qcow);
  t.ok(check.clean, 'qemu-img check clean', { report: check.report });
  const raw = join(work, 'image.raw');
  await convertToRaw(qcow, raw);
  t.same(await comparePartitionTables(disk, raw), [], 'partition table identical to the node\'s disk');
  metric(t, 'image_mib', Math.round((img.size ?? 0) / 104857.6) / 10, 'MiB in Glance');
});

await cleanUp();
