// Agent -> Ironic: version discovery, lookup and heartbeat (the public, token-based part of
// the Ironic API that ironic-python-agent uses).
import { connect } from 'node:net';
import { request, Agent } from 'undici';
import { BmsnapError } from '../errors.js';

export class IronicApiError extends BmsnapError {
  constructor(message: string, readonly status?: number) {
    super(message, 'BMSNAP_IRONIC');
  }
}

export interface LookupResult {
  node: { uuid: string; name?: string; properties?: Record<string, unknown>; [k: string]: unknown };
  config: { heartbeat_timeout?: number; agent_token?: string; [k: string]: unknown };
}

export class IronicApi {
  private readonly dispatcher: Agent;
  private maxVersion: [number, number] | undefined;

  constructor(readonly url: string, opts: { insecure?: boolean; requestId?: string } = {}) {
    this.dispatcher = new Agent({ connect: { rejectUnauthorized: !opts.insecure } });
    this.requestId = opts.requestId;
  }
  private readonly requestId: string | undefined;

  /** Negotiated API version: the lower of what we want and what the server offers. */
  private async version(want: [number, number]): Promise<string> {
    if (!this.maxVersion) {
      const res = await this.send('GET', '/', undefined, undefined);
      const body = (await res.body.json()) as { default_version?: { version?: string } };
      const m = /^(\d+)\.(\d+)$/.exec(body.default_version?.version ?? '');
      this.maxVersion = m ? [Number(m[1]), Number(m[2])] : [1, 1];
    }
    const [a, b] = this.maxVersion;
    const v = a > want[0] || (a === want[0] && b >= want[1]) ? want : [a, b];
    return `${v[0]}.${v[1]}`;
  }

  private async send(method: 'GET' | 'POST', path: string, version: string | undefined, json: unknown) {
    try {
      return await request(`${this.url.replace(/\/+$/, '')}${path}`, {
        method,
        dispatcher: this.dispatcher,
        headers: {
          accept: 'application/json',
          ...(version ? { 'x-openstack-ironic-api-version': version } : {}),
          ...(json !== undefined ? { 'content-type': 'application/json' } : {}),
          ...(this.requestId ? { 'x-openstack-request-id': this.requestId } : {}),
        },
        ...(json !== undefined ? { body: JSON.stringify(json) } : {}),
        headersTimeout: 30_000,
        bodyTimeout: 30_000,
      });
    } catch (err) {
      throw new IronicApiError(`cannot reach Ironic at ${this.url}: ${(err as { code?: string }).code ?? (err as Error).message}`);
    }
  }

  private async fail(res: Awaited<ReturnType<IronicApi['send']>>, what: string): Promise<never> {
    const text = await res.body.text().catch(() => '');
    let msg = text.slice(0, 300);
    try {
      const j = JSON.parse(text) as { error_message?: string | { faultstring?: string } };
      const em = typeof j.error_message === 'string' ? JSON.parse(j.error_message) as { faultstring?: string } : j.error_message;
      msg = em?.faultstring ?? msg;
    } catch { /* keep the raw text */ }
    throw new IronicApiError(`${what}: Ironic answered ${res.statusCode}: ${msg.replace(/\s+/g, ' ').trim()}`, res.statusCode);
  }

  async lookup(macs: string[], nodeUuid?: string): Promise<LookupResult> {
    const v = await this.version([1, 62]);
    const q = new URLSearchParams();
    if (macs.length) q.set('addresses', macs.join(','));
    if (nodeUuid) q.set('node_uuid', nodeUuid);
    const res = await this.send('GET', `/v1/lookup?${q}`, v, undefined);
    if (res.statusCode !== 200) return this.fail(res, 'lookup');
    return (await res.body.json()) as LookupResult;
  }

  async heartbeat(nodeUuid: string, body: { callback_url: string; agent_token: string; agent_version: string; agent_verify_ca?: string }): Promise<void> {
    const v = await this.version([1, 68]);
    const res = await this.send('POST', `/v1/heartbeat/${encodeURIComponent(nodeUuid)}`, v, body);
    if (res.statusCode !== 202 && res.statusCode !== 204 && res.statusCode !== 200) return this.fail(res, 'heartbeat');
    await res.body.dump();
  }

  /** The local address this host uses to reach Ironic: what Ironic should call back. */
  async localAddress(): Promise<string> {
    const u = new URL(this.url);
    const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
    return new Promise((resolve, reject) => {
      const s = connect({ host: u.hostname, port }, () => { const a = s.localAddress!; s.destroy(); resolve(a.replace(/^::ffff:/, '')); });
      s.on('error', (e) => reject(new IronicApiError(`cannot reach Ironic at ${this.url}: ${(e as NodeJS.ErrnoException).code ?? e.message}`)));
    });
  }

  close(): Promise<void> { return this.dispatcher.close(); }
}
