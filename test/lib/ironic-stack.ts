// The real Ironic 29 + Glance 30 stack (test/stack/openstack-stack.sh, a Debian trixie chroot on
// 127.0.0.1) as the end-to-end tests drive it: start/stop (also of one service), the
// `openstack baremetal` CLI, node and image queries, the optional Keystone's admin API, and a
// watcher for the bmsnap-fake boot interface's "ramdisk boots" (<uuid>.cmdline files appearing in
// and vanishing from [bmsnap]fake_boot_dir).
import { execa } from 'execa';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from './disks.js';
import { keystoneAdmin, type KeystoneAdmin } from './keystone.js';

export const STACK_SCRIPT = join(REPO_ROOT, 'test/stack/openstack-stack.sh');
export const PLUGIN_DIR = join(REPO_ROOT, 'ironic-step-py');
export const CHILD_ENV = { NODE_OPTIONS: '' };   // keep tap's loader hooks out of children

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const secs = (since: number) => Math.round((Date.now() - since) / 100) / 10;

export async function waitFor<T>(what: string, timeoutS: number, fn: () => Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutS}s waiting for ${what}`);
    await sleep(300);
  }
}

export interface StackOptions {
  dir: string;
  ironicPort: number;
  glancePort: number;
  /** Extra ironic.conf text (appended). */
  ironicConf?: string;
  /** Extra lines for ironic.conf's [bmsnap] section. */
  bmsnapConf?: string;
  /**
   * With a Keystone on this port (BMSNAP_STACK_KEYSTONE=1): Glance validates tokens, Ironic's
   * [glance] logs in as the service user "ironic" and finds Glance in the catalog.
   */
  keystonePort?: number;
  /**
   * 'keystone' (with keystonePort): the Ironic API validates tokens too, under its stock policy;
   * the helpers below then talk to it as the Keystone admin, and openstack() as any cloud
   * added with addCloud().
   */
  ironicAuth?: 'keystone';
}

/** A Keystone user for clouds.yaml (the `openstack` CLI in the chroot). */
export interface CloudUser { user: string; password: string; project: string }

export type StackService = 'ironic' | 'glance' | 'keystone';

/** The stack with the bmsnap plugin loaded (bmsnap-fake-hardware / bmsnap deploy / bmsnap-fake boot). */
export class IronicStack {
  readonly ironic: string;
  readonly glance: string;
  readonly bootDir: string;
  /** The Keystone's admin API (after start(), with keystonePort). */
  keystone: KeystoneAdmin | undefined;
  private adminToken: { token: string; at: number } | undefined;

  constructor(readonly opts: StackOptions) {
    this.ironic = `http://127.0.0.1:${opts.ironicPort}`;
    this.glance = `http://127.0.0.1:${opts.glancePort}`;
    this.bootDir = join(opts.dir, 'fakeboot');
  }

  get dir(): string { return this.opts.dir; }

  /** Starts Ironic and Glance; resolves to undefined or the failure's output. */
  async start(): Promise<string | undefined> {
    const extra = join(this.dir, '..', `${this.dir.split('/').pop()}-ironic-extra.conf`);
    await writeFile(extra, `[bmsnap]\nfake_boot_dir = /stack/fakeboot\n${this.opts.bmsnapConf ?? ''}\n\n${this.opts.ironicConf ?? ''}\n`);
    await mkdir(this.bootDir, { recursive: true });
    await mkdir(join(this.dir, 'log'), { recursive: true });
    const r = await this.script(['start', this.dir], {
      BMSNAP_IRONIC_PORT: String(this.opts.ironicPort), BMSNAP_GLANCE_PORT: String(this.opts.glancePort),
      BMSNAP_IRONIC_PLUGIN: PLUGIN_DIR,
      BMSNAP_IRONIC_HARDWARE_TYPES: 'fake-hardware,bmsnap-fake-hardware',
      BMSNAP_IRONIC_DEPLOY_INTERFACES: 'fake,direct,bmsnap',
      BMSNAP_IRONIC_BOOT_INTERFACES: 'fake,bmsnap-fake',
      BMSNAP_IRONIC_CONF_EXTRA: extra,
      BMSNAP_STACK_KEYSTONE: this.opts.keystonePort ? '1' : '0',
      ...(this.opts.keystonePort ? { BMSNAP_KEYSTONE_PORT: String(this.opts.keystonePort) } : {}),
      ...(this.opts.ironicAuth ? { BMSNAP_IRONIC_AUTH: this.opts.ironicAuth } : {}),
    });
    if (r.exitCode !== 0) return `rc ${r.exitCode}\n${r.stdout}\n${r.stderr}`;
    if (this.opts.keystonePort) {
      const password = (await readFile(join(this.dir, 'keystone/admin-password'), 'utf8')).trim();
      this.keystone = keystoneAdmin(`http://127.0.0.1:${this.opts.keystonePort}`, { username: 'admin', password, project: 'admin' });
    }
    return undefined;
  }

  /** The stack's generated Keystone passwords (admin, glance, ironic); none without Keystone. */
  async passwords(): Promise<string[]> {
    if (!this.opts.keystonePort) return [];
    return Promise.all(['admin', 'glance', 'ironic'].map(async (n) => (await readFile(join(this.dir, `keystone/${n}-password`), 'utf8')).trim()));
  }

  /** PID of a running service of the stack (from DIR/run/NAME.pid). */
  async servicePid(name: StackService): Promise<number> {
    return Number((await readFile(join(this.dir, 'run', `${name}.pid`), 'utf8')).trim());
  }

  /** (Re)starts one service with its existing config (`openstack-stack.sh restart`). */
  async restartService(name: StackService): Promise<string | undefined> {
    const r = await this.script(['restart', this.dir, name]);
    return r.exitCode === 0 ? undefined : `rc ${r.exitCode}\n${r.stdout}\n${r.stderr}`;
  }

  /** A request to Glance; with Keystone, as the admin (project admin) unless headers carry a token. */
  async glanceFetch(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.keystone && !headers.has('x-auth-token')) headers.set('x-auth-token', await this.adminTokenNow());
    return fetch(`${this.glance}${path}`, { ...init, headers });
  }

  /** A token of the Keystone admin (project admin), renewed every 20 minutes. */
  private async adminTokenNow(): Promise<string> {
    if (!this.adminToken || Date.now() - this.adminToken.at > 20 * 60_000) {
      this.adminToken = { token: (await this.keystone!.token('admin', this.keystone!.admin.password, 'admin')).token, at: Date.now() };
    }
    return this.adminToken.token;
  }

  /** Adds cloud NAME for USER to the clouds.yaml `openstack()` reads (ironicAuth 'keystone'). */
  async addCloud(name: string, u: CloudUser): Promise<void> {
    const file = join(this.dir, '.config/openstack/clouds.yaml');
    const doc = JSON.parse(await readFile(file, 'utf8')) as { clouds: Record<string, unknown> };
    doc.clouds[name] = { auth_type: 'password', region_name: 'RegionOne', auth: {
      auth_url: `${this.keystone!.url}/v3`, username: u.user, password: u.password, project_name: u.project,
      user_domain_name: 'Default', project_domain_name: 'Default' } };
    await writeFile(file, JSON.stringify(doc, null, 1), { mode: 0o600 });
  }

  async stop(): Promise<string | undefined> {
    const r = await this.script(['stop', this.dir]);
    return r.exitCode === 0 ? undefined : `rc ${r.exitCode}\n${r.stdout}\n${r.stderr}`;
  }

  private script(args: string[], env: Record<string, string> = {}) {
    return execa('bash', [STACK_SCRIPT, ...args], { reject: false, stdin: 'ignore', timeout: 900_000, env: { ...CHILD_ENV, ...env } });
  }

  async baremetal(args: string[], opts: { json?: boolean; reject?: boolean } = {}) {
    return this.openstack(['baremetal', ...args], opts);
  }

  /**
   * The chroot's `openstack` CLI (the stack's plugin dir on its PYTHONPATH, so its OSC commands
   * too); as the stack's admin, or as cloud CLOUD (addCloud). timeoutS: kill it after that.
   */
  async openstack(args: string[], opts: { json?: boolean; reject?: boolean; cloud?: string; timeoutS?: number } = {}) {
    const cmd = [...(opts.cloud ? ['env', `OS_CLOUD=${opts.cloud}`] : []), 'openstack', ...args, ...(opts.json ? ['-f', 'json'] : [])];
    const r = await execa('bash', [STACK_SCRIPT, 'run', this.dir, ...cmd],
      { reject: false, stdin: 'ignore', timeout: (opts.timeoutS ?? 300) * 1000, env: CHILD_ENV });
    if (opts.reject !== false && r.exitCode !== 0) throw new Error(`openstack ${args.join(' ')}: rc ${r.exitCode}\n${r.stderr}`);
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), json: opts.json && r.exitCode === 0 ? JSON.parse(String(r.stdout)) : undefined };
  }

  async getNode(ident: string): Promise<any> {
    const auth: Record<string, string> = this.opts.ironicAuth ? { 'x-auth-token': await this.adminTokenNow() } : {};
    const res = await fetch(`${this.ironic}/v1/nodes/${ident}`, { headers: { 'X-OpenStack-Ironic-API-Version': '1.95', ...auth } });
    if (res.status !== 200) throw new Error(`GET node ${ident}: ${res.status} ${await res.text()}`);
    return res.json();
  }

  /** Waits until the node is in one of WANT and not reserved (the conductor is done with it). */
  async waitState(ident: string, want: string[], timeoutS: number): Promise<any> {
    const deadline = Date.now() + timeoutS * 1000;
    let n: any;
    while (Date.now() < deadline) {
      n = await this.getNode(ident);
      if (want.includes(n.provision_state) && !n.reservation) return n;
      await sleep(500);
    }
    throw new Error(`node ${ident} not in ${want.join('|')} after ${timeoutS}s: ${n?.provision_state} (${n?.last_error})`);
  }

  async glanceImages(name: string): Promise<any[]> {
    const res = await this.glanceFetch(`/v2/images?name=${encodeURIComponent(name)}`);
    if (res.status !== 200) throw new Error(`Glance image list: ${res.status} ${await res.text()}`);
    return ((await res.json()) as { images: any[] }).images;
  }

  /** Enrolls a node with everything given at create (no PATCH on trixie's 29.0.5), manage + adopt. */
  async activeNode(name: string, createArgs: string[] = []): Promise<string> {
    const created = await this.baremetal(['node', 'create', '--driver', 'bmsnap-fake-hardware', '--name', name,
      '--deploy-interface', 'bmsnap', '--boot-interface', 'bmsnap-fake', ...createArgs], { json: true });
    await this.baremetal(['node', 'manage', name, '--wait', '60']);
    await this.baremetal(['node', 'adopt', name, '--wait', '60']);
    return created.json.uuid as string;
  }

  /**
   * A node to deploy IMAGEID onto DISK (its root device), made available (enroll -> manage ->
   * provide): bmsnap deploy interface, noop management (fake management boots only from PXE; a
   * deploy ends with "boot from disk"), and sync + out-of-band power off after the write (the
   * fake power interface never sees an in-band power off). Everything at create: trixie's 29.0.5
   * breaks nodes on any PATCH (test/stack/README.md).
   */
  async availableNode(name: string, imageId: string, disk: string): Promise<string> {
    const auth: Record<string, string> = this.opts.ironicAuth ? { 'x-auth-token': await this.adminTokenNow() } : {};
    const res = await fetch(`${this.ironic}/v1/nodes`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'X-OpenStack-Ironic-API-Version': '1.95', ...auth },
      body: JSON.stringify({ name, driver: 'bmsnap-fake-hardware', deploy_interface: 'bmsnap', boot_interface: 'bmsnap-fake',
        management_interface: 'noop', properties: { root_device: { name: disk } }, instance_info: { image_source: imageId },
        driver_info: { deploy_forces_oob_reboot: true } }),
    });
    if (res.status !== 201) throw new Error(`node create: ${res.status} ${await res.text()}`);
    const uuid = ((await res.json()) as { uuid: string }).uuid;
    await this.baremetal(['node', 'manage', name, '--wait', '60']);
    await this.baremetal(['node', 'provide', name, '--wait', '60']);
    return uuid;
  }
}

export const snapshotSteps = (imageName: string, disk: string, args: Record<string, unknown> = {}) =>
  JSON.stringify([{ interface: 'deploy', step: 'snapshot', args: { image_name: imageName, root_device_hints: { name: disk }, ...args } }]);

/** What "booting the ramdisk" started: something that can be killed and ends. */
export interface Boot { uuid: string; token: string; cmdline: string; exited: boolean; kill(signal: NodeJS.Signals): void; done: Promise<unknown> }

/**
 * Watches fake_boot_dir: a new or changed <uuid>.cmdline calls `boot` with its content; the
 * file's removal (the conductor's clean_up_ramdisk, i.e. "power off the ramdisk") kills it.
 */
export class FakeBootWatcher<B extends Boot> {
  readonly boots: B[] = [];
  private running = new Map<string, B>();
  private seen = new Map<string, string>();   // uuid -> cmdline content last started
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private n = 0;

  constructor(private readonly bootDir: string, private readonly workDir: string,
              private readonly boot: (uuid: string, cmdlineFile: string, content: string, n: number) => Promise<B>) {}

  start(): void { this.timer = setInterval(() => { void this.scan(); }, 200); }

  private async scan(): Promise<void> {
    if (this.stopped) return;
    const files = (await readdir(this.bootDir).catch(() => [] as string[])).filter((f) => f.endsWith('.cmdline'));
    const present = new Set(files.map((f) => f.slice(0, -'.cmdline'.length)));
    for (const [uuid, r] of this.running) {
      if (!present.has(uuid)) { if (!r.exited) r.kill('SIGTERM'); this.running.delete(uuid); this.seen.delete(uuid); }
    }
    for (const uuid of present) {
      const content = await readFile(join(this.bootDir, `${uuid}.cmdline`), 'utf8').catch(() => '');
      if (!content || this.seen.get(uuid) === content || this.stopped) continue;
      this.seen.set(uuid, content);
      const old = this.running.get(uuid);
      if (old && !old.exited) old.kill('SIGTERM');
      const i = ++this.n;
      const file = join(this.workDir, `${uuid}.${i}.cmdline`);   // the original vanishes at tear-down
      await writeFile(file, content, { mode: 0o600 });
      const b = await this.boot(uuid, file, content, i);
      this.boots.push(b);
      this.running.set(uuid, b);
    }
  }

  async waitBoot(uuid: string, after: number, timeoutS = 60): Promise<B> {
    return waitFor(`the ramdisk of ${uuid} to boot`, timeoutS, async () => this.boots.slice(after).find((b) => b.uuid === uuid));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    for (const r of this.boots) if (!r.exited) r.kill('SIGKILL');
    await Promise.all(this.boots.map((r) => r.done.catch(() => undefined)));
  }
}

export const tokenOf = (cmdline: string) => /(?:^|\s)ipa-agent-token=(\S+)/.exec(cmdline)?.[1] ?? '';
