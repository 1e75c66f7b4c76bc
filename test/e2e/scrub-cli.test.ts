// `bmsnap image --scrub` from the command line: argument errors, and the clear refusal on a
// kernel without device-mapper (this host's: the overlay needs dm-snapshot, so the scrub itself
// is tested in the ramdisk VM, test/e2e/ramdisk-vm.test.ts). Nothing is left behind either way.
import t from 'tap';
import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT, buildDisk, makeTempDir } from '../lib/disks.js';
import { sha256File } from '../lib/verify.js';

const CLI = join(REPO_ROOT, 'dist/agent/src/cli/main.js');
const bmsnap = (args: string[]) => execa('node', [CLI, ...args], { reject: false, stdin: 'ignore', env: { NODE_OPTIONS: '' } });

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root (loop devices)');
  process.exit(0);
}

const dir = await makeTempDir('bmsnap-scrub-cli-');
const disk = await buildDisk('gpt', dir);
t.teardown(() => disk.cleanup());
const before = await sha256File(disk.path);

t.test('argument errors: one line, exit 2', async (t) => {
  for (const [args, re] of [
    [['--scrub', '--scrub-ops', 'logs,bogus'], /unknown scrub operation "bogus"/],
    [['--scrub-path', '/etc/x'], /need --scrub/],
    [['--scrub', '--scrub-path', '../etc'], /must name something inside/],
  ] as [string[], RegExp][]) {
    const r = await bmsnap(['image', disk.path, '-o', join(dir, 'x.qcow2'), ...args]);
    t.equal(r.exitCode, 2, `${args.join(' ')}: exit 2`);
    t.match(String(r.stderr), re, `${args.join(' ')}: says why`);
    t.equal(String(r.stderr).trim().split('\n').length, 1, 'one line');
  }
});

const hasDm = readFileSync('/proc/misc', 'utf8').includes('device-mapper');
t.test('no device-mapper: a clear refusal, no output, source untouched', { skip: hasDm && 'this kernel has device-mapper' }, async (t) => {
  const out = join(dir, 'scrubbed.qcow2');
  const r = await bmsnap(['image', disk.path, '-o', out, '--scrub', '--quiet']);
  t.equal(r.exitCode, 1, 'exit 1');
  t.match(String(r.stderr), /^bmsnap: scrub needs device-mapper with the snapshot target/, 'says what is missing');
  t.equal(String(r.stderr).trim().split('\n').length, 1, 'one line');
  t.notOk(existsSync(out), 'no output');
  t.same((await readdir(dir)).filter((f) => f.includes('bmsnap-')), [], 'no temp files');
  const loops = await execa('losetup', ['-j', disk.path], { reject: false });
  t.equal(String(loops.stdout).trim(), '', 'no loop device left on the source');
  t.equal(await sha256File(disk.path), before, 'source unchanged');
});
