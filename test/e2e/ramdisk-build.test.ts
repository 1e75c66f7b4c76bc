// ramdisk-build/ (issue 5): the initramfs carries what the agent needs, and the build is
// reproducible — built again from the same inputs in a fresh cache it has the same sha256.
// (Booting it is test/e2e/ramdisk-vm.test.ts.)
import t from 'tap';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../lib/disks.js';
import { sha256File } from '../lib/verify.js';

const BUILD = join(REPO_ROOT, 'ramdisk-build/build.sh');
const CACHE = process.env.BMSNAP_RAMDISK_CACHE ?? '/var/cache/bmsnap/ramdisk';
const env = { NODE_OPTIONS: '' };

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root (apt-get, the cache under /var/cache)');
  process.exit(0);
}

const build = async (cache: string, extra: string[] = []) => {
  const r = await execa('bash', [BUILD, '--quiet', ...extra], { reject: false, stdin: 'ignore', env: { ...env, BMSNAP_RAMDISK_CACHE: cache } });
  return {
    exitCode: r.exitCode, stderr: String(r.stderr),
    kernel: /^kernel (\S+)$/m.exec(String(r.stdout))?.[1] ?? '',
    initramfs: /^initramfs (\S+)$/m.exec(String(r.stdout))?.[1] ?? '',
  };
};

const first = await build(CACHE);
t.equal(first.exitCode, 0, 'build.sh exits 0', { stderr: first.stderr });

t.test('the initramfs holds the agent, its runtime and its tools', async (t) => {
  const list = await execa('bash', ['-c', 'zstd -dc "$1" | cpio -it --quiet', 'x', first.initramfs]);
  const files = new Set(String(list.stdout).split('\n'));
  for (const f of ['init', 'usr/bin/node', 'usr/bin/bmsnap', 'bin/busybox', 'usr/bin/openssl', 'usr/sbin/dmsetup', 'usr/sbin/lvm',
    'usr/sbin/kexec', 'usr/bin/lsblk', 'etc/udhcpc.script', 'opt/bmsnap/dist/agent/src/cli/main.js', 'opt/bmsnap/package.json',
    'opt/bmsnap/node_modules/zstd-napi/build/Release/binding.node', 'opt/bmsnap/node_modules/fastify/package.json']) {
    t.ok(files.has(f), `has /${f}`);
  }
  const modules = [...files].filter((f) => f.endsWith('.ko')).map((f) => f.split('/').pop()!.replace(/\.ko$/, '').replace(/-/g, '_'));
  for (const m of ['virtio_net', 'virtio_blk', 'nvme', 'ahci', 'megaraid_sas', 'e1000e', 'ixgbe', 'mlx5_core', 'ext4', 'xfs', 'dm_snapshot', 'brd', 'jbd2']) {
    t.ok(modules.includes(m), `module ${m}${m === 'jbd2' ? ' (a dependency of ext4)' : ''}`);
  }
  t.ok(files.has(`lib/modules/${[...files].find((f) => /^lib\/modules\/[^/]+$/.test(f))?.split('/')[2]}/modules.dep`), 'its own modules.dep');
  t.notOk([...files].some((f) => f.startsWith('opt/bmsnap/node_modules/typescript/') || f.startsWith('opt/bmsnap/node_modules/tap/')), 'no dev dependencies');
});

t.test('every agent module loads from the shipped file list alone', async (t) => {
  // What agent-files.mjs lists is all the ramdisk (and the bundle) gets: import each module there.
  const dir = await mkdtemp(join(tmpdir(), 'bmsnap-agent-files-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await execa('bash', ['-c', 'node ramdisk-build/agent-files.mjs . | cpio -pdm --quiet "$1"', 'x', dir], { cwd: REPO_ROOT, env });
  const r = await execa('node', ['--input-type=module', '-e', `
    import { readdirSync, statSync } from 'node:fs';
    import { join } from 'node:path';
    const walk = (d) => readdirSync(d).flatMap((n) => statSync(join(d, n)).isDirectory() ? walk(join(d, n)) : [join(d, n)]);
    let n = 0;
    // (not the entry point, which runs the CLI; it is run below; not the worker threads' scripts)
    for (const f of walk('dist/agent/src')) if (f.endsWith('.js') && !f.endsWith('worker.js') && !f.endsWith('cli/main.js')) { await import('./' + f); n++; }
    console.log(n);`], { cwd: dir, reject: false, env });
  t.equal(r.exitCode, 0, 'all modules import', { stderr: String(r.stderr).slice(0, 2000) });
  t.ok(Number(r.stdout) > 40, `${String(r.stdout).trim()} modules imported`);
  const help = await execa('node', ['dist/agent/src/cli/main.js', 'agent', '--help'], { cwd: dir, reject: false, env });
  t.equal(help.exitCode, 0, '`bmsnap agent --help` runs from the copy');
});

t.test('reproducible: a fresh build from the same inputs has the same bytes', async (t) => {
  // A fresh cache that shares only the downloaded kernel package (not the build result).
  const cache = await mkdtemp(join(tmpdir(), 'bmsnap-ramdisk-repro-'));
  t.teardown(() => rm(cache, { recursive: true, force: true }));
  await mkdir(join(cache, 'debs'));
  for (const f of await readdir(join(CACHE, 'debs'))) await symlink(join(CACHE, 'debs', f), join(cache, 'debs', f));
  const second = await build(cache, ['--out', join(cache, 'out')]);
  t.equal(second.exitCode, 0, 'second build exits 0', { stderr: second.stderr });
  t.not(second.initramfs, first.initramfs, 'built anew (not the cached result)');
  t.ok(existsSync(join(cache, 'out', 'bmsnap.initramfs')) && existsSync(join(cache, 'out', 'bmsnap.kernel')), '--out writes bmsnap.kernel and bmsnap.initramfs');
  t.equal(await sha256File(second.initramfs), await sha256File(first.initramfs), 'same initramfs sha256');
  t.equal(await sha256File(second.kernel), await sha256File(first.kernel), 'same kernel sha256');
});
