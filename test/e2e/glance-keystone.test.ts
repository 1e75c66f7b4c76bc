// End-to-end tests of bmsnap's Keystone auth against a REAL Keystone and a REAL Glance that
// validates tokens with it (keystonemiddleware authtoken), both on loopback (test/lib/keystone.ts,
// test/lib/glance.ts): password and application-credential auth through OS_* variables and
// through clouds.yaml (--os-cloud / OS_CLOUD), the image endpoint taken from the token's catalog;
// a Keystone token handed over as OS_TOKEN (the Ironic path); and bad credentials. The password,
// the application credential secret and tokens must never appear in bmsnap's output.
import t, { type Test } from 'tap';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT, makeTempDir, removeTempDir, run } from '../lib/disks.js';
import { hashFile } from '../lib/verify.js';
import { startGlance, type LocalGlance } from '../lib/glance.js';
import { startKeystone, type LocalKeystone } from '../lib/keystone.js';

type Tap = Test;
const CLI = join(REPO_ROOT, 'dist/agent/src/cli/main.js');
const MiB = 2 ** 20;

const PROJECT = 'bmsnap-e2e';
const USER = 'snapper';
const PASSWORD = 'user-password-SECRET-7f3a';
const APP_SECRET = 'app-credential-SECRET-91c2';

interface CliResult { exitCode: number; stdout: string; stderr: string; seconds: number }
interface Manifest { bytesWritten: number; sha512: string; md5: string; glance: { endpoint: string; imageId: string; status: string } }

/** Runs bmsnap with exactly ENV (plus PATH/HOME), none of the runner's OS_* variables. */
async function bmsnap(args: string[], env: Record<string, string>, cwd?: string): Promise<CliResult> {
  const started = Date.now();
  const r = await execa('node', [CLI, ...args], {
    reject: false, stdin: 'ignore', extendEnv: false, timeout: 300_000, ...(cwd ? { cwd } : {}),
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: cwd ?? '/nonexistent', NODE_OPTIONS: '', ...env },
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), seconds: (Date.now() - started) / 1000 };
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '');
}

if (!existsSync(CLI)) {
  t.fail(`${CLI} is missing: run npm run build (npm ci does it)`);
} else {
  // a failed setup is a test failure, and t.teardown still stops what did start
  await main().catch((err: Error) => t.fail(`setup failed: ${err.message}`, { stack: err.stack }));
}

async function main(): Promise<void> {
  const work = await makeTempDir('bmsnap-ks-e2e-');
  let keystone: LocalKeystone | undefined;
  let glance: LocalGlance | undefined;
  t.teardown(async () => {
    await glance?.dispose().catch((e: Error) => t.comment(`glance dispose: ${e.message}`));
    await keystone?.dispose().catch((e: Error) => t.comment(`keystone dispose: ${e.message}`));
    await removeTempDir(work);
  });

  const t0 = Date.now();
  keystone = await startKeystone();
  const ks = keystone;
  t.comment(`keystone up in ${((Date.now() - t0) / 1000).toFixed(1)} s at ${ks.url}`);
  const t1 = Date.now();
  glance = await startGlance({ auth: 'keystone', keystone: { url: ks.url, username: ks.admin.username, password: ks.admin.password } });
  const g = glance;
  t.comment(`glance (keystone auth) up in ${((Date.now() - t1) / 1000).toFixed(1)} s at ${g.url}`);
  await ks.addImageEndpoint(g.url);
  const { projectId } = await ks.createProjectUser({ project: PROJECT, user: USER, password: PASSWORD });
  const cred = await ks.createAppCredential({ user: USER, password: PASSWORD, project: PROJECT, name: 'bmsnap-e2e', secret: APP_SECRET });

  // A small source: 64 MiB, no partition table, 4 MiB of random bytes (copied as is).
  const source = join(work, 'small.raw');
  await run('truncate', ['-s', String(64 * MiB), source]);
  await run('bash', ['-c', 'head -c $((4<<20)) /dev/urandom | dd of="$1" bs=1M seek=1 conv=notrunc status=none', 'src', source]);

  const secrets = [PASSWORD, APP_SECRET, ks.admin.password];
  const authUrl = `${ks.url}/v3`;
  const passwordEnv = {
    OS_AUTH_URL: authUrl, OS_USERNAME: USER, OS_PASSWORD: PASSWORD, OS_PROJECT_NAME: PROJECT,
    OS_USER_DOMAIN_NAME: 'Default', OS_PROJECT_DOMAIN_NAME: 'Default', OS_REGION_NAME: ks.region, OS_INTERFACE: 'public',
  };
  const appCredEnv = {
    OS_AUTH_TYPE: 'v3applicationcredential', OS_AUTH_URL: authUrl,
    OS_APPLICATION_CREDENTIAL_ID: cred.id, OS_APPLICATION_CREDENTIAL_SECRET: APP_SECRET,
  };
  const cloudsDir = join(work, 'clouds');
  await run('mkdir', ['-p', cloudsDir]);
  const cloudsYaml = join(cloudsDir, 'clouds.yaml');
  await writeFile(cloudsYaml, [
    'clouds:',
    '  e2e-password:',
    '    auth:',
    `      auth_url: ${authUrl}`,
    `      username: ${USER}`,
    `      password: ${PASSWORD}`,
    `      project_name: ${PROJECT}`,
    '      user_domain_name: Default',
    '      project_domain_name: Default',
    `    region_name: ${ks.region}`,
    '    interface: public',
    '  e2e-appcred:',
    '    auth_type: v3applicationcredential',
    '    auth:',
    `      auth_url: ${authUrl}`,
    `      application_credential_id: ${cred.id}`,
    `      application_credential_secret: ${APP_SECRET}`,
    '  e2e-wrong-password:',
    '    auth:',
    `      auth_url: ${authUrl}`,
    `      username: ${USER}`,
    '      password: not-the-password-SECRET',
    `      project_name: ${PROJECT}`,
    '',
  ].join('\n'), { mode: 0o600 });
  secrets.push('not-the-password-SECRET', 'bogus-token-SECRET-value');

  /** A successful upload through Keystone: the endpoint came from the catalog, the image is the project's. */
  async function uploads(t: Tap, name: string, args: string[], env: Record<string, string>, cwd?: string): Promise<void> {
    const before = new Set((await g.listImages()).map((i) => i.id));
    const r = await bmsnap(['image', source, '--glance', name, '--json', ...args], env, cwd);
    t.equal(r.exitCode, 0, `exits 0 (${r.seconds.toFixed(1)} s)`, { stderr: r.stderr.split('\n').slice(-5).join('\n') });
    noSecrets(t, r);
    if (r.exitCode !== 0) return;
    const m = JSON.parse(r.stdout) as Manifest;
    t.equal(m.glance.endpoint, g.url, 'the Glance endpoint came from the Keystone catalog');
    t.match(lines(r.stderr).at(-1) ?? '', new RegExp(`^bmsnap: glance image ${m.glance.imageId} active: `), 'final line');
    const img = await g.getImage(m.glance.imageId);
    t.equal(img.status, 'active');
    t.equal(img.owner, projectId, `owner = the ${PROJECT} project (Glance saw a real token of ${USER})`);
    t.equal(img.visibility, 'private');
    t.equal(img.os_hash_value, m.sha512, 'Glance sha512 = manifest');
    t.equal(img.checksum, m.md5, 'Glance md5 = manifest');
    const down = join(work, `${name}.qcow2`);
    await g.downloadImage(m.glance.imageId, down);
    t.equal(await hashFile(down, 'sha512'), m.sha512, 'downloaded bytes match');
    await run('rm', ['-f', down]);
    const added = (await g.listImages()).filter((i) => !before.has(i.id)).map((i) => i.id);
    t.same(added, [m.glance.imageId], 'exactly one new image');
    await g.deleteImage(m.glance.imageId);
  }

  function noSecrets(t: Tap, r: CliResult): void {
    const leaked = secrets.filter((s) => r.stdout.includes(s) || r.stderr.includes(s));
    t.same(leaked, [], 'no password or secret in stdout/stderr');
  }

  async function failsCleanly(t: Tap, args: string[], env: Record<string, string>, pattern: RegExp, cwd?: string): Promise<void> {
    const before = (await g.listImages()).length;
    const r = await bmsnap(['image', source, '--glance', 'e2e-must-fail', '--json', ...args], env, cwd);
    t.equal(r.exitCode, 1, 'exit 1', { stderr: r.stderr });
    const ours = lines(r.stderr).filter((l) => l.startsWith('bmsnap:'));
    t.equal(ours.length, 1, 'one "bmsnap:" line');
    t.equal(lines(r.stderr).at(-1), ours[0], 'the last line');
    t.match(ours[0] ?? '', pattern, 'says what is wrong');
    t.notOk(/^\s+at |internal error/m.test(r.stderr), 'no stack trace, not a bug');
    t.equal(r.stdout, '', 'nothing on stdout');
    noSecrets(t, r);
    t.equal((await g.listImages()).length, before, 'no image created');
    t.comment(`${ours[0] ?? ''}  [${r.seconds.toFixed(1)} s]`);
  }

  t.test('password via OS_* variables', (t) => uploads(t, 'ks-os-password', [], passwordEnv));
  t.test('application credential via OS_* variables', (t) => uploads(t, 'ks-os-appcred', [], appCredEnv));
  t.test('password via clouds.yaml and --os-cloud', (t) =>
    uploads(t, 'ks-clouds-password', ['--os-cloud', 'e2e-password'], { OS_CLIENT_CONFIG_FILE: cloudsYaml }));
  t.test('application credential via ./clouds.yaml and OS_CLOUD', (t) =>
    uploads(t, 'ks-clouds-appcred', [], { OS_CLOUD: 'e2e-appcred' }, cloudsDir));
  t.test('a Keystone token as OS_TOKEN with --glance-url (what the conductor hands over)', async (t) => {
    const { token } = await ks.token(USER, PASSWORD, PROJECT);
    secrets.push(token);
    await uploads(t, 'ks-token', ['--glance-url', g.url], { OS_TOKEN: token });
  });

  t.test('bad credentials fail cleanly', async (t) => {
    t.test('wrong password (OS_*)', (t) => failsCleanly(t, [], { ...passwordEnv, OS_PASSWORD: 'not-the-password-SECRET' }, /Keystone rejected the credentials \(401\)/));
    t.test('wrong password (clouds.yaml)', (t) => failsCleanly(t, ['--os-cloud', 'e2e-wrong-password'], { OS_CLIENT_CONFIG_FILE: cloudsYaml }, /Keystone rejected the credentials \(401\)/));
    t.test('wrong application credential secret', (t) => failsCleanly(t, [], { ...appCredEnv, OS_APPLICATION_CREDENTIAL_SECRET: 'not-the-password-SECRET' }, /Keystone rejected the credentials \(401\)/));
    t.test('unknown cloud name', (t) => failsCleanly(t, ['--os-cloud', 'no-such-cloud'], { OS_CLIENT_CONFIG_FILE: cloudsYaml }, /cloud "no-such-cloud" not found/));
    t.test('a bogus token: Glance (via Keystone) answers 401', (t) =>
      failsCleanly(t, ['--glance-url', g.url], { OS_TOKEN: 'bogus-token-SECRET-value' }, /401 Unauthorized: the token is missing, invalid or expired/));
    t.test('Keystone not reachable', async (t) => {
      const dead = { ...passwordEnv, OS_AUTH_URL: 'http://127.0.0.1:9/v3' };
      await failsCleanly(t, [], dead, /cannot reach Keystone at http:\/\/127\.0\.0\.1:9/);
    });
  });
}
