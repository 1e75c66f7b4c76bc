// The self-contained `bmsnap` bundle (bundle/build.sh, issue 6) on the host: what the payload
// holds, that it runs with no node anywhere (a private mount namespace where /usr/bin/node is
// /dev/null, PATH = busybox applets only), that its private temp dir is 0700 and gone after a
// success, a failure, SIGTERM, SIGINT and a signal to the whole process group (bmsnap's own exit
// status kept), that a SIGKILLed run's dir is swept by the next run, the one-line refusals (not
// x86_64, no gzip, no room, noexec, damaged file), and a reproducible build.
import t, { type Test } from 'tap';
import { execa, type ResultPromise } from 'execa';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT, makeTempDir, removeTempDir } from '../lib/disks.js';
import { buildBundle, payloadNames, stubValues } from '../lib/bundle.js';
import { flipBytes, sha256File } from '../lib/verify.js';
import { requireRootAndAgent } from '../lib/ts-ramdisk.js';

requireRootAndAgent(t, 'apt-get, the cache under /var/cache, mount namespaces');

const metric = (t: Test, name: string, value: number, unit: string) => t.comment(`metric ${name} = ${value} ${unit}`);
// (no t.teardown: it would end the root test while it awaits between subtests)
const work = await makeTempDir('bmsnap-bundletest-');

const built = await buildBundle();
const bundle = built.path;
const size = bundle ? (await stat(bundle)).size : 0;
await t.test('bundle/build.sh', async (t) => {
  t.equal(built.exitCode, 0, 'exits 0', { stderr: built.stderr });
  metric(t, 'bundle_mib', Math.round(size / 104857.6) / 10, 'MiB');
  t.ok(size < 60 * 1048576, `one file of ${(size / 1048576).toFixed(1)} MiB (< 60 MiB)`);
});
if (!bundle) process.exit(1);

// An environment with no node: busybox applets only on PATH, /usr/bin/node hidden in a private
// mount namespace (nothing leaks: unshare makes its mounts private).
const bb = join(work, 'busybox-bin');
await mkdir(bb);
await execa('busybox', ['--install', '-s', bb]);
const PREP = '[ -e /usr/bin/node ] && mount --bind /dev/null /usr/bin/node; exec "$@"';

interface RunOptions { tmp?: string; shell?: string[]; path?: string; prep?: string; file?: string }
/** Starts the bundle (as a file, or through SHELL) with only PATH, HOME and TMPDIR set. */
const START = { reject: false, stdin: 'ignore', detached: true, env: { NODE_OPTIONS: '' } } as const;
function start(args: string[], o: RunOptions = {}): ResultPromise<typeof START> {
  const env = ['env', '-i', `PATH=${o.path ?? bb}`, 'HOME=/', ...(o.tmp ? [`TMPDIR=${o.tmp}`] : [])];
  return execa('unshare', ['-m', '--', 'sh', '-c', `${o.prep ?? ''}${PREP}`, 'sh', ...env, ...(o.shell ?? []), o.file ?? bundle, ...args], START);
}
async function run(args: string[], o: RunOptions = {}) {
  const r = await start(args, o);
  return { exitCode: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}
const freshTmp = async (name: string) => { const d = join(work, name); await mkdir(d); await chmod(d, 0o1777); return d; };
const leftovers = async (dir: string) => (await readdir(dir)).filter((n) => n.startsWith('bmsnap-bundle-'));

await t.test('the payload: node, its loader and libraries, the agent, the tools', async (t) => {
  const names = new Set(await payloadNames(bundle));
  for (const f of ['bmsnap-bundle.json', 'bin/node', 'libexec/node', 'lib/ld-linux-x86-64.so.2', 'lib/libc.so.6', 'lib/libstdc++.so.6',
    'app/package.json', 'app/dist/agent/src/cli/main.js', 'app/node_modules/zstd-napi/build/Release/binding.node',
    ...['kexec', 'dmsetup', 'lvm', 'fsfreeze', 'losetup', 'blkid', 'lsblk'].flatMap((b) => [`bin/${b}`, `libexec/${b}`])]) {
    t.ok(names.has(f), f);
  }
  t.notOk([...names].some((n) => n.startsWith('ramdisk/')), 'no ramdisk by default');
  t.notOk([...names].some((n) => /node_modules\/(typescript|tap)\//.test(n)), 'no dev dependencies');
  const v = await stubValues(bundle);
  t.equal(v.unpack, 'gzip', 'gzip payload (any Linux can unpack it)');
  const head = (await readFile(bundle)).subarray(0, Number(v.offset) - 1).toString('latin1');
  t.ok(head.startsWith('#!/bin/sh\n'), 'a POSIX sh stub');
  for (const sh of ['dash', 'bash', 'busybox sh']) {
    const r = await execa('sh', ['-c', `${sh} -n`], { input: head, reject: false });
    t.equal(r.exitCode, 0, `the stub parses with ${sh} -n`, { stderr: String(r.stderr) });
  }
});

await t.test('runs without node, from busybox sh, dash and bash; the temp dir goes', async (t) => {
  const tmp = await freshTmp('shells');
  const probe = await run(['-c', 'command -v node || echo none'], { file: 'sh', tmp });
  t.equal(probe.stdout.trim(), 'none', 'no node on PATH in the test environment');
  const hidden = await execa('unshare', ['-m', '--', 'sh', '-c', `${PREP}`, 'sh', '/usr/bin/node', '--version'], { reject: false });
  t.not(hidden.exitCode, 0, '/usr/bin/node cannot run in the test environment');
  for (const shell of [[], ['busybox', 'sh'], ['/usr/bin/dash'], ['/bin/bash']]) {
    const t0 = Date.now();
    const r = await run(['--version'], { tmp, shell });
    t.equal(r.exitCode, 0, `${shell.join(' ') || './bmsnap (#!/bin/sh)'}: exit 0 in ${Date.now() - t0} ms`, { stderr: r.stderr });
    t.match(r.stdout, /^bmsnap \d+\.\d+\.\d+$/, 'prints the version');
    if (!shell.length) metric(t, 'run_overhead_ms', Date.now() - t0, 'ms (`bmsnap --version`: unpack + node start + clean-up)');
  }
  t.same(await leftovers(tmp), [], 'nothing left in TMPDIR');
});

await t.test('images a disk exactly as the repository\'s CLI does (workers, zstd addon, loader)', async (t) => {
  const tmp = await freshTmp('image');
  const tree = join(work, 'tree');
  await mkdir(join(tree, 'etc'), { recursive: true });
  await writeFile(join(tree, 'etc', 'hello'), 'hello from the bundle\n');
  await writeFile(join(tree, 'random.bin'), randomBytes(3 << 20));
  const raw = join(work, 'fs.raw');
  await execa('mkfs.ext4', ['-q', '-F', '-d', tree, raw, '48M']);
  const viaBundle = join(work, 'bundle.qcow2');
  const r = await run(['image', raw, '-o', viaBundle, '--quiet'], { tmp });
  t.equal(r.exitCode, 0, 'bundle: image exits 0', { stderr: r.stderr });
  const viaRepo = join(work, 'repo.qcow2');
  await execa('node', [join(REPO_ROOT, 'dist/agent/src/cli/main.js'), 'image', raw, '-o', viaRepo, '--quiet'], { env: { NODE_OPTIONS: '' } });
  t.equal(await sha256File(viaBundle), await sha256File(viaRepo), 'byte-identical to the repository CLI\'s image');
  t.same(await leftovers(tmp), [], 'nothing left in TMPDIR');
});

await t.test('a failing command: bmsnap\'s one-line error and exit status, the temp dir goes', async (t) => {
  const tmp = await freshTmp('failing');
  const r = await run(['image', '/nonexistent/disk', '-o', join(work, 'x.qcow2')], { tmp });
  t.equal(r.exitCode, 1, 'exit 1');
  t.match(r.stderr, /^bmsnap: cannot open source \/nonexistent\/disk[^\n]*$/, 'one line on stderr', { stderr: r.stderr });
  const u = await run(['frobnicate'], { tmp });
  t.equal(u.exitCode, 2, 'a usage error keeps exit 2');
  t.same(await leftovers(tmp), [], 'nothing left in TMPDIR');
});

// A run that takes long enough to be interrupted: a 64 GiB sparse file with no filesystem is
// read whole (zeros).
const big = join(work, 'big.raw');
await execa('truncate', ['-s', '64G', big]);

/** Starts imaging BIG; resolves once bmsnap (node) runs, with the private dir and both PIDs. */
async function startLong(tmp: string | undefined, out: string) {
  const p = start(['image', big, '-o', out, '--quiet'], tmp ? { tmp } : {});
  const parent = tmp ?? '/dev/shm';
  for (let i = 0; i < 300; i++) {
    const name = (await readdir(parent)).find((n) => n.startsWith(`bmsnap-bundle-${p.pid}-`));
    const pids = name ? (await readFile(join(parent, name, '.bmsnap-pids'), 'utf8').catch(() => '')).trim().split('\n') : [];
    if (name && pids.length === 2) {
      await sleep(1500);   // node started and installed its signal handlers
      return { p, dir: join(parent, name), stub: Number(pids[0]), child: Number(pids[1]) };
    }
    await sleep(100);
  }
  p.kill('SIGKILL');
  throw new Error('the bundle did not start bmsnap within 30 s');
}
const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };

for (const [signal, target] of [['SIGTERM', 'stub'], ['SIGINT', 'stub'], ['SIGTERM', 'process group'], ['SIGHUP', 'stub']] as const) {
  await t.test(`${signal} to the ${target} while bmsnap runs`, async (t) => {
    const tmp = await freshTmp(`sig-${signal}-${target.replace(' ', '-')}`);
    const out = join(tmp, 'out.qcow2');
    const long = await startLong(tmp, out);
    t.equal((await stat(long.dir)).mode & 0o777, 0o700, 'the private dir is mode 0700');
    t.equal(long.stub, long.p.pid, 'its name and .bmsnap-pids carry the stub\'s PID');
    if (target === 'stub') process.kill(long.stub, signal); else process.kill(-long.p.pid!, signal);
    const r = await long.p;
    t.equal(r.exitCode, 130, 'exit status 130 (bmsnap\'s, for an interrupted run)', { stderr: String(r.stderr) });
    t.match(String(r.stderr), /^bmsnap: interrupted$/m, 'bmsnap stopped cleanly (the signal counted once: not a forced quit)', { stderr: String(r.stderr) });
    t.notOk(alive(long.child), 'bmsnap (node) is gone');
    t.same(await leftovers(tmp), [], 'the private dir is gone');
    t.notOk(existsSync(out), 'no output file');
    t.same((await readdir(tmp)).filter((n) => n.includes('out.qcow2')), [], 'no partial output either');
  });
}

await t.test('a run killed outright (SIGKILL) is swept by the next run', async (t) => {
  const tmp = await freshTmp('sigkill');
  const long = await startLong(tmp, join(tmp, 'out.qcow2'));
  process.kill(long.child, 'SIGKILL');
  process.kill(long.stub, 'SIGKILL');
  await long.p;
  for (let i = 0; i < 100 && alive(long.child); i++) await sleep(100);
  t.same((await leftovers(tmp)).length, 1, 'the dir of the killed run is left behind');
  const r = await run(['--version'], { tmp });
  t.equal(r.exitCode, 0, 'the next run works');
  t.same(await leftovers(tmp), [], 'and removed it');
});

await t.test('without TMPDIR: /dev/shm when it is a tmpfs and /tmp is not', async (t) => {
  const isTmpfs = async (d: string) => (await execa('stat', ['-f', '-c', '%T', d])).stdout.trim() === 'tmpfs';
  if (await isTmpfs('/tmp') || !(await isTmpfs('/dev/shm'))) { t.plan(0, 'this host has a tmpfs /tmp or no tmpfs /dev/shm'); return; }
  const long = await startLong(undefined, join(work, 'shm.qcow2'));
  t.pass(`unpacked into ${long.dir}`);
  const name = long.dir.split('/').pop()!;
  t.notOk(existsSync(join('/tmp', name)), 'not into /tmp');
  process.kill(long.stub, 'SIGTERM');
  const r = await long.p;
  t.equal(r.exitCode, 130, 'stopped');
  t.notOk(existsSync(long.dir), 'and removed');
});

await t.test('as an ordinary user (nobody)', async (t) => {
  const r = await execa('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', 'env', '-i', 'PATH=/usr/bin:/bin', bundle, '--version'],
    { reject: false, env: { NODE_OPTIONS: '' } });
  t.equal(r.exitCode, 0, 'exit 0', { stderr: String(r.stderr) });
  t.match(String(r.stdout), /^bmsnap \d+\.\d+\.\d+$/, 'prints the version');
  const theirs = async (dir: string) => {
    const names = (await readdir(dir)).filter((n) => n.startsWith('bmsnap-bundle-'));
    return (await Promise.all(names.map(async (n) => (await stat(join(dir, n))).uid === 65534))).filter(Boolean).length;
  };
  t.equal(await theirs('/dev/shm') + await theirs('/tmp'), 0, 'no directory of theirs left in /dev/shm or /tmp');
});

await t.test('clear one-line refusals', async (t) => {
  const oneLine = (t: Test, r: { exitCode?: number; stderr: string }, re: RegExp, what: string) => {
    t.equal(r.exitCode, 1, `${what}: exit 1`);
    t.match(r.stderr, re, `${what}: ${r.stderr.trim()}`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
  };
  const arch = await execa('setarch', ['i686', 'sh', bundle, '--version'], { reject: false, env: { NODE_OPTIONS: '' } });
  oneLine(t, { exitCode: arch.exitCode, stderr: String(arch.stderr) }, /^bmsnap: this bundle runs on x86_64 Linux only, not on Linux i686/, 'not x86_64');

  const noGzip = join(work, 'no-gzip');
  await mkdir(noGzip);
  await execa('busybox', ['--install', '-s', noGzip]);
  await rm(join(noGzip, 'gzip'));
  oneLine(t, await run(['--version'], { path: noGzip, tmp: await freshTmp('nogzip') }), /^bmsnap: cannot unpack myself: gzip is not installed$/m, 'no gzip');

  const small = join(work, 'small');
  await mkdir(small);
  const prepSmall = `mount -t tmpfs -o size=8m tmpfs ${small} && chmod 1777 ${small}; `;
  oneLine(t, await run(['--version'], { tmp: small, prep: prepSmall }), /^bmsnap: cannot unpack: not enough space in .*small: \d+ MiB needed, [0-9] MiB free \(set TMPDIR to another directory\)$/m, 'no room');
  const prepNoexec = `mount -t tmpfs -o noexec tmpfs ${small} && chmod 1777 ${small}; `;
  oneLine(t, await run(['--version'], { tmp: small, prep: prepNoexec }), /^bmsnap: cannot unpack: .*small is mounted noexec/m, 'noexec');
  oneLine(t, await run(['--version'], { tmp: join(work, 'missing') }), /^bmsnap: cannot unpack: .*missing is not a writable directory/m, 'no such TMPDIR');

  const damaged = join(work, 'damaged-bmsnap');
  await copyFile(bundle, damaged);
  await flipBytes(damaged, Math.floor(size * 0.6), 64);
  const tmp = await freshTmp('damaged');
  oneLine(t, await run(['--version'], { tmp, file: damaged }), /^bmsnap: cannot unpack into .*damaged/m, 'damaged file');
  t.same(await leftovers(tmp), [], 'damaged file: nothing left in TMPDIR');
});

await t.test('the wrapped tools run from the unpacked payload with the bundle\'s own libraries', async (t) => {
  const dir = join(work, 'unpacked');
  await mkdir(dir);
  const { offset, unpack } = await stubValues(bundle);
  await execa('sh', ['-c', `tail -c +${offset} "$1" | ${unpack} -dc | tar -xf - -C "$2"`, 'x', bundle, dir]);
  for (const [cmd, re] of [['node -e console.log(process.version)', /^v\d+\./], ['kexec --version', /kexec-tools/], ['dmsetup version', /Library version/],
    ['lvm version', /LVM version/], ['fsfreeze --version', /util-linux/], ['losetup --version', /util-linux/], ['blkid -V', /blkid from util-linux/],
    ['lsblk --version', /util-linux/]] as const) {
    const [bin, ...args] = cmd.split(' ');
    const r = await execa('unshare', ['-m', '--', 'sh', '-c', PREP, 'sh', 'env', '-i', `PATH=${bb}`, join(dir, 'bin', bin!), ...args], { reject: false, all: true });
    t.match(String(r.all), re, `${cmd}: ${String(r.all).split('\n')[0]}`);
  }
});

await t.test('reproducible: a fresh build from the same inputs has the same bytes', async (t) => {
  const cache = join(work, 'cache');
  const again = await buildBundle(['--out', join(work, 'out')], cache);
  t.equal(again.exitCode, 0, 'second build exits 0', { stderr: again.stderr });
  t.ok(again.path.startsWith(join(work, 'out')), '--out DIR gets DIR/bmsnap');
  // against the default cache's build of the same inputs now (the agent may have been rebuilt
  // since the start of this test)
  const ref = await buildBundle();
  t.equal(await sha256File(again.path), await sha256File(ref.path), 'same sha256 as the cached build of the same inputs');
  metric(t, 'bundle_build_s', again.seconds, 's (uncached build)');
});

await t.test('--with-ramdisk embeds the ramdisk kernel and initramfs', async (t) => {
  const r = await buildBundle(['--with-ramdisk']);
  t.equal(r.exitCode, 0, 'exits 0', { stderr: r.stderr });
  const names = await payloadNames(r.path);
  t.ok(names.includes('ramdisk/bmsnap.kernel') && names.includes('ramdisk/bmsnap.initramfs'), 'ramdisk/bmsnap.kernel + bmsnap.initramfs');
  metric(t, 'bundle_with_ramdisk_mib', Math.round((await stat(r.path)).size / 104857.6) / 10, 'MiB');
  const tmp = await freshTmp('with-ramdisk');
  const v = await run(['--version'], { tmp, file: r.path });
  t.equal(v.exitCode, 0, 'runs');
  t.same(await leftovers(tmp), [], 'nothing left in TMPDIR');
});

await removeTempDir(work);
