// The conductor plugin's Python unit tests, run with the real ironic 29 package of the cached
// Debian trixie chroot (test/stack), so CI runs them with the rest of the suite.
import t from 'tap';
import { execa } from 'execa';

t.test('ironic-step-py unit tests pass against the real ironic package', async (t) => {
  const r = await execa('bash', ['ironic-step-py/tests/run-in-chroot.sh', '-v'], { reject: false, all: true });
  const out = r.all ?? '';
  const ran = /Ran (\d+) tests?/.exec(out);
  t.ok(ran && Number(ran[1]) > 0, `ran ${ran?.[1] ?? 0} tests`);
  t.equal(r.exitCode, 0, 'unittest exits 0');
  t.match(out, /\nOK/, 'unittest reports OK');
  if (r.exitCode !== 0) t.comment(out.slice(-4000));
});
