// Nova cannot run here: a loopback HTTP server replaying a recorded Nova API response
// (test/fixtures/nova/servers-detail.json, microversion 2.1, admin view) for the two calls bmsnap
// makes to find a server: GET /v2.1/servers/{id} and GET /v2.1/servers/detail?name=REGEX. With
// view "member" it hides OS-EXT-SRV-ATTR:* as Nova's default policy does for non-admins.
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { REPO_ROOT } from './disks.js';

export const NOVA_FIXTURE = join(REPO_ROOT, 'test/fixtures/nova/servers-detail.json');

export interface NovaRequest { method: string; url: string; token: string | undefined }
type Srv = Record<string, unknown> & { id: string; name: string };

export interface FakeNova {
  /** The compute endpoint, as a catalog lists it: http://127.0.0.1:PORT/v2.1 */
  url: string;
  servers: Srv[];
  view: 'admin' | 'member';
  requests: NovaRequest[];
  close(): Promise<void>;
}

export async function startFakeNova(port: number): Promise<FakeNova> {
  const servers = (JSON.parse(await readFile(NOVA_FIXTURE, 'utf8')) as { servers: Srv[] }).servers;
  const nova: FakeNova = { url: `http://127.0.0.1:${port}/v2.1`, servers, view: 'admin', requests: [], close: async () => {} };
  const shown = (s: Srv) => (nova.view === 'admin' ? s : Object.fromEntries(Object.entries(s).filter(([k]) => !k.startsWith('OS-EXT-SRV-ATTR:'))));
  const server: Server = createServer((req, res) => {
    const token = req.headers['x-auth-token'];
    nova.requests.push({ method: req.method ?? '', url: req.url ?? '', token: typeof token === 'string' ? token : undefined });
    const u = new URL(req.url ?? '/', 'http://nova');
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json', 'openstack-api-version': 'compute 2.1' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'GET') return send(405, { badRequest: { code: 405, message: 'method not allowed here' } });
    if (u.pathname === '/v2.1/servers/detail') {
      const name = u.searchParams.get('name');
      const re = name === null ? undefined : new RegExp(name);
      return send(200, { servers: servers.filter((s) => !re || re.test(s.name)).map(shown) });
    }
    const m = /^\/v2\.1\/servers\/([^/]+)$/.exec(u.pathname);
    if (m) {
      const s = servers.find((x) => x.id === decodeURIComponent(m[1]!));
      return s ? send(200, { server: shown(s) }) : send(404, { itemNotFound: { code: 404, message: `Instance ${decodeURIComponent(m[1]!)} could not be found.` } });
    }
    send(404, { itemNotFound: { code: 404, message: 'The resource could not be found.' } });
  });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, '127.0.0.1', resolve); });
  nova.close = () => new Promise((resolve) => server.close(() => resolve()));
  return nova;
}
