// A real OpenStack Keystone (Debian bookworm's python3-keystone 22, "Zed") on loopback, for the
// e2e tests of bmsnap's Keystone auth (OS_* variables, clouds.yaml, application credentials).
//
// Everything lives in its own directory: keystone.conf, a sqlite DB, fernet and credential key
// repositories, logs. test/lib/keystone-init.sh (keystone-manage db_sync / fernet_setup /
// credential_setup / bootstrap; shared with the trixie stack's Keystone) prepares it (~10 s), then
// `keystone-wsgi-public` (pbr's wsgiref test server: one process, one thread, plenty for tests)
// serves it; it is stopped by PID, and killed at exit if the test process dies. python3-keystone
// is apt-installed on first use (~30 s, no debconf questions, no service started: the `keystone`
// package, which runs uwsgi and asks questions, is not needed).
//
// keystoneAdmin() is the admin-API client alone; the trixie stack's Keystone
// (test/lib/ironic-stack.ts) uses it too.
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT, makeTempDir, removeTempDir } from './disks.js';
import { pickPort } from './glance.js';

const KEYSTONE_MANAGE = '/usr/bin/keystone-manage';
const KEYSTONE_WSGI = '/usr/bin/keystone-wsgi-public';
export const KEYSTONE_INIT = join(REPO_ROOT, 'test/lib/keystone-init.sh');

/** Admin-API access to a Keystone (bootstrap admin, domain Default). */
export interface KeystoneAdmin {
  /** http://127.0.0.1:PORT (the identity endpoint is URL/v3). */
  url: string;
  region: string;
  /** The bootstrap admin (project "admin", domain Default). */
  admin: { username: string; password: string; project: string };
  /** A project-scoped token for USER (domain Default). */
  token(user: string, password: string, project: string): Promise<{ token: string; userId: string; projectId: string }>;
  /** An admin-token call to the identity API; throws on >= 400. */
  api(method: string, path: string, body?: unknown, token?: string): Promise<Record<string, unknown>>;
  /** Registers an "image" service with public/internal/admin endpoints at URL. */
  addImageEndpoint(url: string): Promise<void>;
  /** A project, and a user with ROLE (default member) on it. */
  createProjectUser(o: { project: string; user: string; password: string; role?: string }): Promise<{ projectId: string; userId: string }>;
  /** An application credential of USER (scoped to PROJECT), with the given secret. */
  createAppCredential(o: { user: string; password: string; project: string; name: string; secret: string }): Promise<{ id: string }>;
}

export interface LocalKeystone extends KeystoneAdmin {
  port: number;
  dir: string;
  pid: number;
  stop(): Promise<void>;
  /** stop() and remove the dir. */
  dispose(): Promise<void>;
  logTail(lines?: number): string;
}

const live = new Set<number>();
process.on('exit', () => {
  for (const pid of live) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

function alive(pid: number): boolean {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/ Z /.test(st.slice(st.lastIndexOf(')') + 1, st.lastIndexOf(')') + 4));
  } catch {
    return false;
  }
}

/** apt-get install python3-keystone if keystone-manage is missing (root only). */
export async function ensureKeystoneInstalled(): Promise<void> {
  if (existsSync(KEYSTONE_MANAGE) && existsSync(KEYSTONE_WSGI)) return;
  if (process.getuid?.() !== 0) throw new Error('python3-keystone is not installed and we are not root');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => execa('apt-get', ['install', '-y', '-q', '--no-install-recommends', '-o', 'DPkg::Lock::Timeout=600', 'python3-keystone'],
    { env, reject: false, stdin: 'ignore', timeout: 900_000 });
  let r = await install();
  if (r.exitCode !== 0) {
    await execa('apt-get', ['-q', '-o', 'DPkg::Lock::Timeout=600', 'update'], { env, reject: false, stdin: 'ignore' });
    r = await install();
  }
  if (r.exitCode !== 0) throw new Error(`apt-get install python3-keystone failed:\n${String(r.stderr).slice(-2000)}`);
}

export async function startKeystone(opts: { port?: number; adminPassword?: string } = {}): Promise<LocalKeystone> {
  await ensureKeystoneInstalled();
  const dir = await makeTempDir('bmsnap-keystone-');
  const region = 'RegionOne';
  const admin = { username: 'admin', password: opts.adminPassword ?? `admin-${Math.random().toString(36).slice(2)}`, project: 'admin' };
  let pid = 0;
  let port = 0;
  try {
    port = opts.port ?? (await pickPort());
    const url = `http://127.0.0.1:${port}`;
    await mkdir(join(dir, 'log'));
    await writeFile(join(dir, 'admin-password'), admin.password, { mode: 0o600 });
    const init = await execa('sh', [KEYSTONE_INIT, dir, url, region, join(dir, 'log/keystone.log')], { reject: false, stdin: 'ignore', timeout: 300_000 });
    if (init.exitCode !== 0) throw new Error(`keystone-init.sh failed (${init.exitCode}):\n${String(init.stderr).slice(-2000)}`);

    const out = openSync(join(dir, 'log/stdout.log'), 'a');
    const child = spawn(KEYSTONE_WSGI, ['--host', '127.0.0.1', '--port', String(port)], {
      detached: true, stdio: ['ignore', out, out], env: { ...process.env, OS_KEYSTONE_CONFIG_FILES: join(dir, 'keystone.conf') },
    });
    closeSync(out);
    child.unref();
    pid = child.pid ?? 0;
    if (!pid) throw new Error('keystone-wsgi-public did not start');
    live.add(pid);
    const deadline = Date.now() + 90_000;
    for (;;) {
      const ok = await fetch(`${url}/v3`).then((r) => r.status === 200, () => false);
      if (ok) break;
      if (!alive(pid)) throw new Error(`keystone-wsgi-public exited during startup:\n${readFileSync(join(dir, 'log/stdout.log'), 'utf8').slice(-2000)}`);
      if (Date.now() > deadline) throw new Error('keystone not answering after 90 s');
      await sleep(200);
    }
  } catch (err) {
    if (pid) await stopPid(pid);
    await removeTempDir(dir);
    throw err;
  }

  const ks: LocalKeystone = {
    ...keystoneAdmin(`http://127.0.0.1:${port}`, admin, region),
    port, dir, pid,
    async stop() {
      if (!ks.pid) return;
      await stopPid(ks.pid);
      ks.pid = 0;
    },
    async dispose() {
      try {
        await ks.stop();
      } finally {
        await removeTempDir(dir);
      }
    },
    logTail(lines = 30) {
      try {
        return readFileSync(join(dir, 'log/keystone.log'), 'utf8').split('\n').slice(-lines - 1).join('\n');
      } catch {
        return '';
      }
    },
  };
  return ks;
}

/** The admin-API client of the Keystone at URL, logging in as ADMIN (domain Default). */
export function keystoneAdmin(url: string, admin: { username: string; password: string; project: string }, region = 'RegionOne'): KeystoneAdmin {
  let adminToken: string | undefined;
  const ks: KeystoneAdmin = {
    url, region, admin,
    async token(user, password, project) {
      const res = await fetch(`${url}/v3/auth/tokens`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ auth: {
          identity: { methods: ['password'], password: { user: { name: user, domain: { name: 'Default' }, password } } },
          scope: { project: { name: project, domain: { name: 'Default' } } },
        } }),
      });
      const body = (await res.json()) as { token?: { user: { id: string }; project: { id: string } } };
      const token = res.headers.get('x-subject-token');
      if (res.status !== 201 || !token || !body.token) throw new Error(`keystone token for ${user}: ${res.status}`);
      return { token, userId: body.token.user.id, projectId: body.token.project.id };
    },
    async api(method, path, body, token) {
      adminToken ??= (await ks.token(admin.username, admin.password, admin.project)).token;
      const res = await fetch(`${url}/v3${path}`, {
        method,
        headers: { 'content-type': 'application/json', 'x-auth-token': token ?? adminToken },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      const text = await res.text();
      if (res.status >= 400) throw new Error(`keystone ${method} ${path}: ${res.status} ${text.slice(0, 300)}`);
      return text ? (JSON.parse(text) as Record<string, unknown>) : {};
    },
    async addImageEndpoint(imageUrl) {
      const svc = (await ks.api('POST', '/services', { service: { type: 'image', name: 'glance', enabled: true } })) as { service: { id: string } };
      for (const iface of ['public', 'internal', 'admin']) {
        await ks.api('POST', '/endpoints', { endpoint: { service_id: svc.service.id, interface: iface, url: imageUrl, region_id: region, enabled: true } });
      }
    },
    async createProjectUser(o) {
      const project = (await ks.api('POST', '/projects', { project: { name: o.project, domain_id: 'default', enabled: true } })) as { project: { id: string } };
      const user = (await ks.api('POST', '/users', { user: { name: o.user, password: o.password, domain_id: 'default', enabled: true, default_project_id: project.project.id } })) as { user: { id: string } };
      const roles = (await ks.api('GET', `/roles?name=${encodeURIComponent(o.role ?? 'member')}`)) as { roles: { id: string }[] };
      const role = roles.roles[0];
      if (!role) throw new Error(`no role ${o.role ?? 'member'}`);
      await ks.api('PUT', `/projects/${project.project.id}/users/${user.user.id}/roles/${role.id}`);
      return { projectId: project.project.id, userId: user.user.id };
    },
    async createAppCredential(o) {
      const t = await ks.token(o.user, o.password, o.project);
      const r = (await ks.api('POST', `/users/${t.userId}/application_credentials`,
        { application_credential: { name: o.name, secret: o.secret } }, t.token)) as { application_credential: { id: string } };
      return { id: r.application_credential.id };
    },
  };
  return ks;
}

/** SIGTERM, then SIGKILL after 10 s; by PID only. */
async function stopPid(pid: number): Promise<void> {
  try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(100);
  if (alive(pid)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    for (let i = 0; i < 50 && alive(pid); i++) await sleep(100);
  }
  live.delete(pid);
}
