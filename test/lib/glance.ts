// A real OpenStack Glance (Debian bookworm's glance-api 25, "Zed") on loopback, for the e2e
// tests: test/lib/glance-local.sh installs it if missing (apt), writes a config into its own
// directory (sqlite DB, file store, no Keystone) and starts one glance-api process; this file
// wraps that script, picks free ports in 19300-19399, and stops what it started by PID only
// (never pkill). If the test process dies or is killed, every glance-api it started is killed
// at exit.
//
// Also: a small loopback HTTP proxy in front of a Glance that answers 500 to the first N
// requests matching a rule and forwards everything else (Glance can't fail on demand).
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { createWriteStream } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { type Socket } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT, makeTempDir, removeTempDir } from './disks.js';
import { portFree } from './ports.js';

export const GLANCE_SCRIPT = join(REPO_ROOT, 'test/lib/glance-local.sh');
const PORT_RANGE: [number, number] = [19300, 19399];

export type GlanceAuth = 'noauth' | 'headers' | 'keystone';

export interface GlanceOptions {
  /**
   * noauth (default): every request is admin. headers: identity from X-* headers, 401 without.
   * keystone: tokens validated by the Keystone in `keystone` (see test/lib/keystone.ts).
   */
  auth?: GlanceAuth;
  /** For auth 'keystone': Keystone's URL and the service user Glance validates tokens with. */
  keystone?: { url: string; username: string; password: string; project?: string };
  /** image_size_cap in bytes (default 10 GiB). */
  sizeCap?: number;
  /** A fixed port; default: a free one in 19300-19399. */
  port?: number;
  /** Reuse this directory (e.g. after a crash); default: a fresh temp dir, removed by dispose(). */
  dir?: string;
  /** client_socket_timeout in seconds (default 900). */
  socketTimeout?: number;
}

export interface GlanceImageRecord {
  id: string;
  name?: string | null;
  status: string;
  size?: number | null;
  checksum?: string | null;
  os_hash_algo?: string | null;
  os_hash_value?: string | null;
  visibility?: string;
  disk_format?: string | null;
  container_format?: string | null;
  min_disk?: number;
  virtual_size?: number | null;
  [property: string]: unknown;
}

export interface LocalGlance {
  /** http://127.0.0.1:PORT (changes only if a restart had to move to another port). */
  url: string;
  port: number;
  dir: string;
  /** PID of the running glance-api, 0 when stopped. */
  pid: number;
  auth: GlanceAuth;
  /** Headers the harness sends: trusted admin identity ('headers'), an admin token ('keystone'). */
  adminHeaders: Record<string, string>;
  /** SIGTERM by PID via the script (SIGKILL after 10 s). Idempotent. */
  stop(): Promise<void>;
  /** Sends SIGNAL to the glance-api PID and waits until it is gone. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts glance-api again on the same dir (and port, if still free). */
  restart(): Promise<void>;
  /** stop() and, if the harness made the dir, remove it. */
  dispose(): Promise<void>;
  /** Every image Glance lists (all statuses; admin view); with hidden, the hidden ones (os_hidden) too. */
  listImages(opts?: { hidden?: boolean }): Promise<GlanceImageRecord[]>;
  getImage(id: string): Promise<GlanceImageRecord>;
  deleteImage(id: string): Promise<number>;
  /** GET /v2/images/{id}/file into PATH. */
  downloadImage(id: string, path: string): Promise<void>;
  /** Files in the store (DIR/images) with their sizes. */
  imageFiles(): Promise<{ name: string; size: number }[]>;
  /** Last lines of glance-api's log, for test diagnostics. */
  logTail(lines?: number): string;
}

/** PIDs this process started and has not yet seen stop; killed at exit whatever happens. */
const live = new Map<number, string>();
const portsTaken = new Set<number>();

function isOurGlance(pid: number, dir: string): boolean {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
    return cmd.includes(`glance-api --config-file ${dir}/etc/glance-api.conf`);
  } catch {
    return false;
  }
}

process.on('exit', () => {
  for (const [pid, dir] of live) {
    if (isOurGlance(pid, dir)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
  }
});

/** Gone, or a zombie (its parent is init; cmdline is empty then). */
function isGone(pid: number): boolean {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return / Z /.test(st.slice(st.lastIndexOf(')') + 1, st.lastIndexOf(')') + 4));
  } catch {
    return true;
  }
}

export { portFree };

/** A free port in 19300-19399, starting at a random place (several runs may share the machine). */
export async function pickPort(exclude: Set<number> = portsTaken): Promise<number> {
  const [lo, hi] = PORT_RANGE;
  const n = hi - lo + 1;
  const start = Math.floor(Math.random() * n);
  for (let i = 0; i < n; i++) {
    const port = lo + ((start + i) % n);
    if (exclude.has(port)) continue;
    if (await portFree(port)) return port;
  }
  throw new Error(`no free port in ${lo}-${hi}`);
}

async function script(args: string[], env: Record<string, string>): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const r = await execa('bash', [GLANCE_SCRIPT, ...args], {
    reject: false, stdin: 'ignore', timeout: 900_000, env: { ...env, NODE_OPTIONS: '' },
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout).trim(), stderr: String(r.stderr) };
}

export async function startGlance(opts: GlanceOptions = {}): Promise<LocalGlance> {
  const auth = opts.auth ?? 'noauth';
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? (await makeTempDir('bmsnap-glance-'));
  const env: Record<string, string> = {
    GLANCE_AUTH: auth,
    GLANCE_BIND: '127.0.0.1',
    ...(opts.sizeCap !== undefined ? { GLANCE_IMAGE_SIZE_CAP: String(opts.sizeCap) } : {}),
    ...(opts.socketTimeout !== undefined ? { GLANCE_SOCKET_TIMEOUT: String(opts.socketTimeout) } : {}),
  };
  if (auth === 'keystone') {
    if (!opts.keystone) throw new Error("startGlance: auth 'keystone' needs the keystone option");
    Object.assign(env, {
      GLANCE_KEYSTONE_URL: opts.keystone.url, GLANCE_KEYSTONE_USER: opts.keystone.username,
      GLANCE_KEYSTONE_PASSWORD: opts.keystone.password, GLANCE_KEYSTONE_PROJECT: opts.keystone.project ?? 'admin',
    });
  }
  const adminHeaders: Record<string, string> = auth === 'headers'
    ? { 'X-Identity-Status': 'Confirmed', 'X-Roles': 'admin', 'X-Project-Id': 'bmsnap-tests' }
    : {};

  const g: LocalGlance = {
    url: '', port: 0, dir, pid: 0, auth, adminHeaders,
    async stop() {
      if (!g.pid) return;
      const r = await script(['stop', dir], env);
      if (r.exitCode !== 0) throw new Error(`glance-local.sh stop failed: ${r.stderr}`);
      live.delete(g.pid);
      g.pid = 0;
    },
    async kill(signal = 'SIGKILL') {
      if (!g.pid) return;
      const pid = g.pid;
      if (isOurGlance(pid, dir)) process.kill(pid, signal);
      for (let i = 0; i < 200 && !isGone(pid); i++) await sleep(50);
      if (!isGone(pid)) throw new Error(`glance-api ${pid} still running after ${signal}`);
      live.delete(pid);
      g.pid = 0;
      await rm(join(dir, 'glance-api.pid'), { force: true });
    },
    async restart() {
      await g.stop();
      await launch(portsTaken.has(g.port) && (await portFree(g.port)) ? g.port : undefined);
    },
    async dispose() {
      try {
        await g.stop();
      } finally {
        portsTaken.delete(g.port);
        if (ownDir) await removeTempDir(dir);
      }
    },
    async listImages(opts = {}) {
      const all: GlanceImageRecord[] = [];
      // Glance lists hidden images only when asked, and then only those
      for (const start of ['/v2/images?limit=100', ...(opts.hidden ? ['/v2/images?limit=100&os_hidden=true'] : [])]) {
        let next: string | undefined = start;
        while (next) {
          const body = (await json('GET', next)) as { images: GlanceImageRecord[]; next?: string };
          all.push(...body.images);
          next = body.next;
        }
      }
      return all;
    },
    async getImage(id) {
      return (await json('GET', `/v2/images/${id}`)) as GlanceImageRecord;
    },
    async deleteImage(id) {
      const res = await fetch(`${g.url}/v2/images/${id}`, { method: 'DELETE', headers: adminHeaders });
      await res.arrayBuffer();
      return res.status;
    },
    async downloadImage(id, path) {
      const res = await fetch(`${g.url}/v2/images/${id}/file`, { headers: adminHeaders });
      if (res.status !== 200 || !res.body) throw new Error(`GET /v2/images/${id}/file: ${res.status}`);
      await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>), createWriteStream(path));
    },
    async imageFiles() {
      const names = await readdir(join(dir, 'images')).catch(() => [] as string[]);
      const out: { name: string; size: number }[] = [];
      for (const name of names.sort()) out.push({ name, size: (await stat(join(dir, 'images', name)).catch(() => ({ size: -1 }))).size });
      return out;
    },
    logTail(lines = 30) {
      try {
        return readFileSync(join(dir, 'log/glance-api.log'), 'utf8').split('\n').slice(-lines - 1).join('\n');
      } catch {
        return '';
      }
    },
  };

  async function json(method: string, path: string): Promise<unknown> {
    const res = await fetch(`${g.url}${path}`, { method, headers: { accept: 'application/json', ...adminHeaders } });
    const text = await res.text();
    if (res.status >= 400) throw new Error(`${method} ${path}: ${res.status} ${text.slice(0, 300)}`);
    return JSON.parse(text);
  }

  async function launch(fixedPort?: number): Promise<void> {
    let lastError = '';
    for (let attempt = 0; attempt < (fixedPort ? 1 : 5); attempt++) {
      const port = fixedPort ?? (await pickPort());
      portsTaken.add(port);
      const r = await script(['start', dir, String(port)], env);
      const pid = Number(r.stdout.split('\n').pop());
      if (r.exitCode === 0 && Number.isInteger(pid) && pid > 0) {
        if (g.port && g.port !== port) portsTaken.delete(g.port);
        Object.assign(g, { pid, port, url: `http://127.0.0.1:${port}` });
        live.set(pid, dir);
        return;
      }
      portsTaken.delete(port);
      lastError = r.stderr.trim().split('\n').slice(-15).join('\n');
      // somebody else took the port between our check and glance's bind: try another one
      if (!/already in use|exited during startup/.test(r.stderr)) break;
    }
    throw new Error(`cannot start glance-api in ${dir}:\n${lastError}`);
  }

  try {
    await launch(opts.port);
    if (auth === 'keystone') adminHeaders['X-Auth-Token'] = await keystoneToken(opts.keystone!);
  } catch (err) {
    await g.stop().catch(() => {});
    if (ownDir) await removeTempDir(dir);
    throw err;
  }
  return g;
}

/** A project-scoped token (domain Default), for the harness's own admin calls. */
async function keystoneToken(k: { url: string; username: string; password: string; project?: string }): Promise<string> {
  const res = await fetch(`${k.url.replace(/\/+$/, '').replace(/\/v3$/, '')}/v3/auth/tokens`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ auth: {
      identity: { methods: ['password'], password: { user: { name: k.username, domain: { name: 'Default' }, password: k.password } } },
      scope: { project: { name: k.project ?? 'admin', domain: { name: 'Default' } } },
    } }),
  });
  await res.arrayBuffer();
  const token = res.headers.get('x-subject-token');
  if (res.status !== 201 || !token) throw new Error(`keystone token for ${k.username}: ${res.status}`);
  return token;
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting proxy

export interface ProxyRule {
  method: string;
  /** Matches the request path (no query). */
  path: RegExp;
  /** Answer 500 to the first COUNT matching requests, forward the rest. */
  count: number;
  status?: number;
}

export interface FaultProxy {
  url: string;
  port: number;
  /** Requests seen, in order: "METHOD /path -> status|forwarded". */
  log: string[];
  /** How many requests each rule has answered itself. */
  injected: number[];
  close(): Promise<void>;
}

/** A loopback HTTP proxy to TARGET (http://host:port) that injects errors per RULES. */
/** PORT: a fixed port (default: a free one in Glance's test range). */
export async function startFaultProxy(target: string, rules: ProxyRule[], fixedPort?: number): Promise<FaultProxy> {
  const t = new URL(target);
  const injected = rules.map(() => 0);
  const log: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const i = rules.findIndex((r, k) => r.method === req.method && r.path.test(path) && injected[k]! < r.count);
    if (i >= 0) {
      injected[i]!++;
      const status = rules[i]!.status ?? 500;
      log.push(`${req.method} ${path} -> ${status} (injected)`);
      req.resume();
      const body = JSON.stringify({ message: 'injected by the test proxy', code: `${status} Internal Server Error`, title: 'Internal Server Error' });
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    log.push(`${req.method} ${path} -> forwarded`);
    const up = httpRequest({
      host: t.hostname, port: t.port, method: req.method, path: req.url,
      headers: { ...req.headers, host: t.host },
    }, (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.on('aborted', () => up.destroy());
    req.pipe(up);
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  const port = fixedPort ?? await pickPort();
  portsTaken.add(port);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    url: `http://127.0.0.1:${port}`, port, log, injected,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      portsTaken.delete(port);
    },
  };
}
