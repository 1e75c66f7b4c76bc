// Finds the Glance endpoint and a token, the way OpenStack clients do:
//  1. an explicit endpoint + token (what the Ironic conductor hands the agent), or
//  2. Keystone v3 with the usual settings: OS_* environment variables, or a clouds.yaml entry
//     (--os-cloud / OS_CLOUD), with password or application-credential auth; the image
//     endpoint comes from the token's service catalog.
// Secrets are only ever sent to Keystone; they never go into errors or logs.
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { parse as parseYaml } from 'yaml';
import { AuthError } from './errors.js';
import type { GlanceConnection } from './client.js';

export interface CloudConfig {
  auth_url?: string;
  auth_type?: string;
  username?: string;
  user_id?: string;
  password?: string;
  user_domain_name?: string;
  user_domain_id?: string;
  project_name?: string;
  project_id?: string;
  project_domain_name?: string;
  project_domain_id?: string;
  application_credential_id?: string;
  application_credential_name?: string;
  application_credential_secret?: string;
  token?: string;
  region_name?: string;
  interface?: string;
  image_endpoint?: string;
  cacert?: string;
  verify?: boolean;
}

export interface AuthInput {
  /** --glance-url: skip the catalog. */
  endpoint?: string;
  /** A token from OS_TOKEN/OS_AUTH_TOKEN or --token-file. */
  token?: string;
  /** --os-cloud / OS_CLOUD. */
  cloud?: string;
  cacert?: string;
  insecure?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** Reads OS_* variables into a CloudConfig (only the ones set). */
export function cloudFromEnv(env: NodeJS.ProcessEnv): CloudConfig {
  const map: Record<string, keyof CloudConfig> = {
    OS_AUTH_URL: 'auth_url', OS_AUTH_TYPE: 'auth_type', OS_USERNAME: 'username', OS_USER_ID: 'user_id',
    OS_PASSWORD: 'password', OS_USER_DOMAIN_NAME: 'user_domain_name', OS_USER_DOMAIN_ID: 'user_domain_id',
    OS_PROJECT_NAME: 'project_name', OS_TENANT_NAME: 'project_name', OS_PROJECT_ID: 'project_id', OS_TENANT_ID: 'project_id',
    OS_PROJECT_DOMAIN_NAME: 'project_domain_name', OS_PROJECT_DOMAIN_ID: 'project_domain_id',
    OS_APPLICATION_CREDENTIAL_ID: 'application_credential_id', OS_APPLICATION_CREDENTIAL_NAME: 'application_credential_name',
    OS_APPLICATION_CREDENTIAL_SECRET: 'application_credential_secret', OS_REGION_NAME: 'region_name',
    OS_INTERFACE: 'interface', OS_IMAGE_URL: 'image_endpoint', OS_CACERT: 'cacert',
  };
  const out: Record<string, string> = {};
  for (const [k, field] of Object.entries(map)) if (env[k]) out[field] ??= env[k]!;
  return out as CloudConfig;
}

export async function loadCloudsYaml(name: string, env: NodeJS.ProcessEnv): Promise<CloudConfig> {
  const candidates = [env.OS_CLIENT_CONFIG_FILE, join(process.cwd(), 'clouds.yaml'), join(homedir(), '.config/openstack/clouds.yaml'), '/etc/openstack/clouds.yaml'].filter(Boolean) as string[];
  for (const path of candidates) {
    let text: string;
    try { text = await readFile(path, 'utf8'); } catch { continue; }
    let doc: { clouds?: Record<string, { auth?: CloudConfig } & CloudConfig> };
    try { doc = parseYaml(text) as typeof doc; } catch { throw new AuthError(`${path} is not valid YAML`); }
    const cloud = doc?.clouds?.[name];
    if (!cloud) continue;
    const { auth, ...rest } = cloud;
    return { ...rest, ...auth, ...(rest.interface ? {} : {}) } as CloudConfig;
  }
  throw new AuthError(`cloud "${name}" not found in clouds.yaml (looked in ${candidates.join(', ')})`);
}

export async function resolveGlance(input: AuthInput): Promise<GlanceConnection> {
  const env = input.env ?? process.env;
  const cloud: CloudConfig = input.cloud || env.OS_CLOUD ? await loadCloudsYaml((input.cloud ?? env.OS_CLOUD)!, env) : cloudFromEnv(env);
  const cacertPath = input.cacert ?? cloud.cacert;
  const ca = cacertPath ? await readFile(cacertPath, 'utf8').catch(() => { throw new AuthError(`cannot read CA bundle ${cacertPath}`); }) : undefined;
  const tls = { ...(ca ? { ca } : {}), verifyTls: !(input.insecure || cloud.verify === false) };
  const endpoint = input.endpoint ?? cloud.image_endpoint;
  const token = input.token ?? cloud.token ?? env.OS_TOKEN ?? env.OS_AUTH_TOKEN;
  if (endpoint && (token || !cloud.auth_url)) {
    return { endpoint, ...(token ? { token } : {}), ...tls };
  }
  if (!cloud.auth_url) {
    throw new AuthError('no Glance to talk to: give --glance-url (and a token in OS_TOKEN or --token-file), or OpenStack credentials (OS_AUTH_URL + OS_* variables, or --os-cloud)');
  }
  const { token: issued, catalogUrl } = await keystoneToken(cloud, tls);
  return { endpoint: endpoint ?? catalogUrl, token: issued, ...tls };
}

interface CatalogEntry { type: string; endpoints: { interface: string; region?: string; region_id?: string; url: string }[] }

async function keystoneToken(c: CloudConfig, tls: { ca?: string; verifyTls: boolean }): Promise<{ token: string; catalogUrl: string }> {
  const base = c.auth_url!.replace(/\/+$/, '').replace(/\/v3$/, '');
  const body = { auth: { identity: identityOf(c), ...scopeOf(c) } };
  let res;
  try {
    res = await request(`${base}/v3/auth/tokens`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(body),
      dispatcher: new Agent({ connect: { rejectUnauthorized: tls.verifyTls, ...(tls.ca ? { ca: tls.ca } : {}) } }),
    });
  } catch (err) {
    throw new AuthError(`cannot reach Keystone at ${base}: ${(err as Error).message}`, { cause: err });
  }
  const text = await res.body.text();
  if (res.statusCode === 401) throw new AuthError('Keystone rejected the credentials (401)');
  if (res.statusCode >= 400) throw new AuthError(`Keystone answered ${res.statusCode}`);
  const token = res.headers['x-subject-token'];
  if (typeof token !== 'string') throw new AuthError('Keystone issued no token');
  const catalog = (JSON.parse(text) as { token?: { catalog?: CatalogEntry[] } }).token?.catalog ?? [];
  const iface = (c.interface ?? 'public').replace(/URL$/, '');
  const image = catalog.find((e) => e.type === 'image');
  const ep = image?.endpoints.find((e) => e.interface === iface && (!c.region_name || e.region === c.region_name || e.region_id === c.region_name));
  if (!ep) throw new AuthError(`no ${iface} image endpoint${c.region_name ? ` in region ${c.region_name}` : ''} in the Keystone catalog`);
  return { token, catalogUrl: ep.url };
}

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
