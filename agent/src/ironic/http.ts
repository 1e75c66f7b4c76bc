// The Ironic REST API as both of bmsnap's Ironic clients speak it (the agent's lookup/heartbeat,
// the operator's snapshot trigger): microversion negotiation, an optional Keystone token, and
// Ironic's error bodies turned into one line.
import { request, type Agent, type Dispatcher } from 'undici';
import { BmsnapError } from '../errors.js';
import { answered, describeNetError, tlsAgent, type TlsOptions } from '../openstack/http.js';

export class IronicApiError extends BmsnapError {
  constructor(message: string, readonly status?: number) {
    super(message, 'BMSNAP_IRONIC');
  }
}

export interface IronicHttpOptions extends TlsOptions {
  /** Keystone token (X-Auth-Token); none for a no-auth Ironic or the agent's public calls. */
  token?: string;
  /** Same as verifyTls: false. */
  insecure?: boolean;
  requestId?: string;
}

export type Version = [number, number];

export class IronicHttp {
  readonly url: string;
  private readonly dispatcher: Agent;
  private maxVersion: Version | undefined;

  constructor(url: string, private readonly opts: IronicHttpOptions = {}) {
    // a catalog URL may carry the version path: requests add their own /v1
    this.url = url.replace(/\/+$/, '').replace(/\/v1$/, '');
    this.dispatcher = tlsAgent({ ...opts, verifyTls: opts.verifyTls !== false && !opts.insecure });
  }

  /** Negotiated API version: the lower of WANT and what the server offers; below MIN is an error. */
  protected async version(want: Version, min?: Version, what = 'this'): Promise<string> {
    if (!this.maxVersion) {
      const res = await this.send('GET', '/', undefined, undefined);
      if (res.statusCode !== 200) return this.fail(res, 'reading the API versions');
      const body = (await res.body.json()) as { default_version?: { version?: string } };
      const m = /^(\d+)\.(\d+)$/.exec(body.default_version?.version ?? '');
      this.maxVersion = m ? [Number(m[1]), Number(m[2])] : [1, 1];
    }
    const [a, b] = this.maxVersion;
    if (min && (a < min[0] || (a === min[0] && b < min[1]))) {
      throw new IronicApiError(`Ironic at ${this.url} offers API ${a}.${b}; ${what} needs ${min[0]}.${min[1]} or newer`);
    }
    const v = a > want[0] || (a === want[0] && b >= want[1]) ? want : [a, b];
    return `${v[0]}.${v[1]}`;
  }

  protected async send(method: 'GET' | 'POST' | 'PUT', path: string, version: string | undefined, json: unknown): Promise<Dispatcher.ResponseData> {
    try {
      return await request(`${this.url}${path}`, {
        method,
        dispatcher: this.dispatcher,
        headers: {
          accept: 'application/json',
          ...(version ? { 'x-openstack-ironic-api-version': version } : {}),
          ...(json !== undefined ? { 'content-type': 'application/json' } : {}),
          ...(this.opts.token ? { 'x-auth-token': this.opts.token } : {}),
          ...(this.opts.requestId ? { 'x-openstack-request-id': this.opts.requestId } : {}),
        },
        ...(json !== undefined ? { body: JSON.stringify(json) } : {}),
        headersTimeout: 30_000,
        bodyTimeout: 30_000,
      });
    } catch (err) {
      throw new IronicApiError(`cannot reach Ironic at ${this.url}: ${describeNetError(err)}`);
    }
  }

  protected async fail(res: Dispatcher.ResponseData, what: string): Promise<never> {
    const text = await res.body.text().catch(() => '');
    throw new IronicApiError(`${what}: ${answered('Ironic', res.statusCode, text, 300)}`, res.statusCode);
  }

  close(): Promise<void> { return this.dispatcher.close(); }
}
