// Scrub operations on a real directory tree (the VM test applies them to a mounted overlay).
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync, lstatSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { OPERATIONS, looksLikeLinuxRoot, parseOperations, scrubTree } from '../../agent/src/scrub/operations.js';
import { UsageError } from '../../agent/src/errors.js';

function tree(t: { teardown: (f: () => void) => void }): { root: string; outside: string; put: (p: string, c?: string) => void } {
  const base = mkdtempSync(join(tmpdir(), 'bmsnap-scrub-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  const root = join(base, 'root');
  const outside = join(base, 'outside');
  mkdirSync(root); mkdirSync(outside);
  const put = (p: string, c = 'x') => { mkdirSync(dirname(join(root, p)), { recursive: true }); writeFileSync(join(root, p), c); };
  for (const d of ['usr/bin', 'etc']) mkdirSync(join(root, d), { recursive: true });
  return { root, outside, put };
}

t.test('the default set removes per-machine state and keeps the rest', async (t) => {
  const { root, put } = tree(t);
  put('etc/ssh/ssh_host_ed25519_key'); put('etc/ssh/ssh_host_ed25519_key.pub'); put('etc/ssh/sshd_config', 'keep');
  put('etc/machine-id', '0123456789abcdef0123456789abcdef\n'); put('var/lib/dbus/machine-id', 'abc');
  put('var/lib/cloud/instances/i-1/obj.pkl'); symlinkSync('/var/lib/cloud/instances/i-1', join(root, 'var/lib/cloud/instance'));
  put('var/lib/cloud/data/instance-id'); put('var/lib/cloud/scripts/per-boot/keep.sh', 'keep');
  put('var/log/syslog', 'lots'); put('var/log/syslog.1'); put('var/log/apt/history.log.2.gz'); put('var/log/apt/history.log', 'h');
  put('var/log/journal/abc/system.journal');
  put('root/.bash_history', 'secret'); put('home/alice/.bash_history', 'secret'); put('home/alice/.python_history');
  put('home/alice/.ssh/authorized_keys', 'keep'); put('home/alice/data.txt', 'keep');
  put('var/lib/dhcp/dhclient.eth0.leases'); put('var/lib/NetworkManager/internal-xyz-eth0.lease');
  put('tmp/build/x.o'); put('var/tmp/cache');
  t.ok(await looksLikeLinuxRoot(root), 'looks like a Linux root');

  const report = await scrubTree(root, parseOperations(undefined));
  t.notOk(existsSync(join(root, 'etc/ssh/ssh_host_ed25519_key')) || existsSync(join(root, 'etc/ssh/ssh_host_ed25519_key.pub')), 'host keys gone');
  t.equal(readFileSync(join(root, 'etc/ssh/sshd_config'), 'utf8'), 'keep', 'sshd_config kept');
  t.equal(statSync(join(root, 'etc/machine-id')).size, 0, 'machine-id emptied (exists, so systemd treats the boot as a first boot)');
  t.notOk(existsSync(join(root, 'var/lib/dbus/machine-id')), 'dbus machine-id removed');
  t.notOk(existsSync(join(root, 'var/lib/cloud/instances/i-1')) || lstatSync(join(root, 'var/lib/cloud'), { throwIfNoEntry: false }) === undefined, 'cloud-init instance gone');
  t.notOk(existsSync(join(root, 'var/lib/cloud/data/instance-id')), 'cloud-init data gone');
  t.ok(existsSync(join(root, 'var/lib/cloud/scripts/per-boot/keep.sh')), 'cloud-init scripts kept');
  t.equal(statSync(join(root, 'var/log/syslog')).size, 0, 'syslog emptied');
  t.equal(statSync(join(root, 'var/log/apt/history.log')).size, 0, 'nested log emptied');
  for (const p of ['var/log/syslog.1', 'var/log/apt/history.log.2.gz', 'var/log/journal/abc/system.journal']) t.notOk(existsSync(join(root, p)), `${p} removed`);
  for (const p of ['root/.bash_history', 'home/alice/.bash_history', 'home/alice/.python_history']) t.notOk(existsSync(join(root, p)), `${p} removed`);
  t.ok(existsSync(join(root, 'home/alice/.ssh/authorized_keys')), 'authorized_keys kept (ssh-userdir is opt-in)');
  t.ok(existsSync(join(root, 'home/alice/data.txt')), 'user data kept');
  t.notOk(existsSync(join(root, 'var/lib/dhcp/dhclient.eth0.leases')) || existsSync(join(root, 'var/lib/NetworkManager/internal-xyz-eth0.lease')), 'leases gone');
  t.ok(existsSync(join(root, 'tmp')) && !existsSync(join(root, 'tmp/build')), '/tmp emptied, kept');
  t.notOk(existsSync(join(root, 'var/tmp/cache')), '/var/tmp emptied');
  t.same(Object.keys(report).sort(), OPERATIONS.filter((o) => o.byDefault).map((o) => o.name).sort(), 'report per operation');
  t.ok(report['ssh-hostkeys']!.removed.includes('etc/ssh/ssh_host_ed25519_key'), 'report names what was removed');
});

t.test('symlinks are never followed out of the tree', async (t) => {
  const { root, outside, put } = tree(t);
  writeFileSync(join(outside, '.bash_history'), 'outside');
  mkdirSync(join(outside, 'alice')); writeFileSync(join(outside, 'alice', '.bash_history'), 'outside');
  mkdirSync(join(outside, 'tmpdir')); writeFileSync(join(outside, 'tmpdir', 'f'), 'outside');
  symlinkSync(outside, join(root, 'home'));            // /home -> somewhere else (absolute)
  symlinkSync(join(outside, 'tmpdir'), join(root, 'tmp'));
  mkdirSync(join(root, 'root'));
  symlinkSync(join(outside, '.bash_history'), join(root, 'root/.bash_history'));
  put('var/log/x.log', 'l');
  await scrubTree(root, parseOperations('default,ssh-userdir'), ['/home/alice/.bash_history']);
  t.equal(readFileSync(join(outside, 'alice', '.bash_history'), 'utf8'), 'outside', 'a file behind a symlinked /home is untouched');
  t.equal(readFileSync(join(outside, 'tmpdir', 'f'), 'utf8'), 'outside', 'a symlinked /tmp is not emptied through the link');
  t.equal(readFileSync(join(outside, '.bash_history'), 'utf8'), 'outside', 'a history symlink is removed, not its target');
  t.notOk(existsSync(join(root, 'root/.bash_history')), 'the symlink itself is gone');
});

t.test('extra paths and operation lists', async (t) => {
  const { root, put } = tree(t);
  put('opt/app/secrets.env'); put('opt/app/keep');
  const report = await scrubTree(root, parseOperations('tmp'), ['/opt/app/secrets.env', 'nope/missing']);
  t.notOk(existsSync(join(root, 'opt/app/secrets.env')), 'extra path removed');
  t.ok(existsSync(join(root, 'opt/app/keep')), 'its neighbour kept');
  t.same(report.paths?.removed, ['opt/app/secrets.env'], 'reported (a missing path is not an error)');
  t.throws(() => parseOperations('logs,bogus'), UsageError, 'unknown operation: usage error');
  await t.rejects(scrubTree(root, [], ['../etc']), UsageError, '".." refused');
  await t.rejects(scrubTree(root, [], ['/']), UsageError, '"/" refused');
  t.same(parseOperations('ssh-userdir,default').map((o) => o.name)[0], 'ssh-userdir', 'lists combine');
});
