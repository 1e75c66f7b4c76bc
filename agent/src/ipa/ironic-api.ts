// Agent -> Ironic: version discovery, lookup and heartbeat (the public, token-based part of
// the Ironic API that ironic-python-agent uses).
import { connect } from 'node:net';
import { IronicApiError, IronicHttp } from '../ironic/http.js';

export { IronicApiError };

export interface LookupResult {
  node: { uuid: string; name?: string; properties?: Record<string, unknown>; [k: string]: unknown };
  config: { heartbeat_timeout?: number; agent_token?: string; [k: string]: unknown };
}

export class IronicApi extends IronicHttp {
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
}
