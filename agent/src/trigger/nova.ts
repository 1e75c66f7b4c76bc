// Just enough of the Nova API to find a server: by id (GET /servers/{id}), else by exact name
// (GET /servers/detail?name=^NAME$, then an exact match, as the openstack CLI does). Nova shows
// OS-EXT-SRV-ATTR:hypervisor_hostname (for Ironic: the node's UUID) to admins only.
import { request, type Dispatcher } from 'undici';
import { answered, describeNetError, tlsAgent, type TlsOptions } from '../openstack/http.js';
import { NovaError } from './errors.js';

export interface NovaServer {
  id: string;
  name: string;
  status?: string;
  'OS-EXT-SRV-ATTR:hypervisor_hostname'?: string | null;
}

const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;
export const isUuid = (s: string) => UUID.test(s);

export class NovaClient {
  private readonly base: string;
  private readonly dispatcher: Dispatcher;

  constructor(endpoint: string, private readonly conn: TlsOptions & { token?: string }) {
    this.base = endpoint.replace(/\/+$/, '');
    this.dispatcher = tlsAgent(conn, { headersTimeout: 60_000, bodyTimeout: 60_000 });
  }

  /** The server IDENT names (id, else exact name); undefined if none; an error if several. */
  async findServer(ident: string): Promise<NovaServer | undefined> {
    if (isUuid(ident)) {
      const byId = await this.get<{ server: NovaServer }>(`/servers/${encodeURIComponent(ident)}`, `reading server ${ident}`);
      if (byId) return byId.server;
    }
    const anchored = `^${ident.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`;
    const list = await this.get<{ servers: NovaServer[] }>(`/servers/detail?name=${encodeURIComponent(anchored)}`, `looking up server ${ident}`);
    const found = (list?.servers ?? []).filter((s) => s.name === ident);
    if (found.length > 1) throw new NovaError(`${found.length} servers are named ${ident} (${found.map((s) => s.id).join(', ')}): give the server id`);
    return found[0];
  }

  /** GET PATH as JSON; undefined on 404. */
  private async get<T>(path: string, what: string): Promise<T | undefined> {
    let res: Dispatcher.ResponseData;
    try {
      res = await request(`${this.base}${path}`, {
        method: 'GET',
        dispatcher: this.dispatcher,
        headers: { accept: 'application/json', ...(this.conn.token ? { 'x-auth-token': this.conn.token } : {}) },
      });
    } catch (err) {
      throw new NovaError(`${what}: cannot reach Nova at ${this.base}: ${describeNetError(err)}`);
    }
    if (res.statusCode === 404) { await res.body.dump(); return undefined; }
    if (res.statusCode >= 400) {
      const text = await res.body.text().catch(() => '');
      throw new NovaError(`${what}: ${answered('Nova', res.statusCode, text)}`, res.statusCode);
    }
    return (await res.body.json()) as T;
  }

  close(): Promise<void> { return this.dispatcher.close(); }
}
