// Keystone v3: a token for the cloud's credentials (password, application credential or token
// auth) and the service catalog that comes with it. Secrets go only into the request to Keystone.
import { request } from 'undici';
import type { CloudConfig, ServiceType } from './cloud-config.js';
import { AuthError } from './errors.js';
import { describeNetError, tlsAgent, type TlsOptions } from './http.js';

interface CatalogEntry { type: string; endpoints: { interface: string; region?: string; region_id?: string; url: string }[] }

export interface KeystoneToken {
  token: string;
  catalog: CatalogEntry[];
}

export async function keystoneToken(c: CloudConfig, tls: TlsOptions): Promise<KeystoneToken> {
  const base = c.auth_url!.replace(/\/+$/, '').replace(/\/v3$/, '');
  const body = { auth: { identity: identityOf(c), ...scopeOf(c) } };
  const dispatcher = tlsAgent(tls);
  let res;
  try {
    res = await request(`${base}/v3/auth/tokens`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(body),
      dispatcher,
    });
  } catch (err) {
    await dispatcher.close();
    throw new AuthError(`cannot reach Keystone at ${base}: ${describeNetError(err)}`, { cause: err });
  }
  const text = await res.body.text();
  await dispatcher.close();
  if (res.statusCode === 401) throw new AuthError('Keystone rejected the credentials (401)');
  if (res.statusCode >= 400) throw new AuthError(`Keystone answered ${res.statusCode}`);
  const token = res.headers['x-subject-token'];
  if (typeof token !== 'string') throw new AuthError('Keystone issued no token');
  const catalog = (JSON.parse(text) as { token?: { catalog?: CatalogEntry[] } }).token?.catalog ?? [];
  return { token, catalog };
}

/** The URL of TYPE for the cloud's interface (default public) and region, if the catalog has one. */
export function catalogEndpoint(catalog: CatalogEntry[], type: ServiceType, c: CloudConfig): string | undefined {
  const iface = catalogInterface(c);
  const entry = catalog.find((e) => e.type === type);
  return entry?.endpoints.find((e) => e.interface === iface && (!c.region_name || e.region === c.region_name || e.region_id === c.region_name))?.url;
}

export const catalogInterface = (c: CloudConfig) => (c.interface ?? 'public').replace(/URL$/, '');

function identityOf(c: CloudConfig): object {
  const type = c.auth_type ?? (c.application_credential_id || c.application_credential_name ? 'v3applicationcredential' : c.token ? 'token' : 'password');
  if (type.includes('applicationcredential')) {
    if (!c.application_credential_secret) throw new AuthError('application credential auth needs a secret (OS_APPLICATION_CREDENTIAL_SECRET)');
    const cred = c.application_credential_id
      ? { id: c.application_credential_id, secret: c.application_credential_secret }
      : { name: c.application_credential_name, secret: c.application_credential_secret, user: userOf(c) };
    return { methods: ['application_credential'], application_credential: cred };
  }
  if (type.includes('token')) {
    if (!c.token) throw new AuthError('token auth needs a token (OS_TOKEN)');
    return { methods: ['token'], token: { id: c.token } };
  }
  if (!c.password) throw new AuthError('password auth needs a password (OS_PASSWORD)');
  return { methods: ['password'], password: { user: { ...userOf(c), password: c.password } } };
}

function userOf(c: CloudConfig): object {
  if (c.user_id) return { id: c.user_id };
  if (!c.username) throw new AuthError('no user given (OS_USERNAME or OS_USER_ID)');
  return { name: c.username, domain: c.user_domain_id ? { id: c.user_domain_id } : { name: c.user_domain_name ?? 'Default' } };
}

function scopeOf(c: CloudConfig): object {
  if (c.application_credential_id || c.application_credential_name) return {}; // scoped by the credential
  if (c.project_id) return { scope: { project: { id: c.project_id } } };
  if (c.project_name) {
    return { scope: { project: { name: c.project_name, domain: c.project_domain_id ? { id: c.project_domain_id } : { name: c.project_domain_name ?? 'Default' } } } };
  }
  return {};
}
