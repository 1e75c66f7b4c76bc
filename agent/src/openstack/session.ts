// An authenticated view of one cloud for the clients here (Glance, Ironic, Nova): a token (or
// none) and each service's endpoint, found the way the openstack CLI finds them:
//  - explicit endpoints (--glance-url, --ironic-url, ...; clouds.yaml <type>_endpoint_override,
//    OS_<TYPE>_ENDPOINT_OVERRIDE) with a token from OS_TOKEN, or with no token for a no-auth
//    service;
//  - OS_AUTH_TYPE=none + OS_ENDPOINT (clouds.yaml auth_type: none, auth.endpoint): no Keystone,
//    the endpoint is the `primary` service's;
//  - else Keystone v3 with the cloud's credentials, endpoints from the token's catalog.
import { readFile } from 'node:fs/promises';
import { loadCloud, type CloudConfig, type ServiceType } from './cloud-config.js';
import { AuthError } from './errors.js';
import type { TlsOptions } from './http.js';
import { catalogEndpoint, catalogInterface, keystoneToken } from './keystone.js';

export interface SessionInput {
  /** --os-cloud (else OS_CLOUD, else the OS_* variables). */
  cloud?: string;
  /** Environment to read OS_* from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** A token from --token-file (else OS_TOKEN / OS_AUTH_TOKEN). */
  token?: string;
  cacert?: string;
  insecure?: boolean;
  /** Endpoints given explicitly (command-line flags): no catalog lookup for these. */
  endpoints?: Partial<Record<ServiceType, string>>;
  /** The service OS_ENDPOINT stands for with auth type none. */
  primary?: ServiceType;
  /** Services the caller cannot do without; the others are looked up if the catalog has them. */
  required: ServiceType[];
  /** What to tell a user who gave nothing to talk to. */
  missing: string;
}

export interface OpenStackSession extends TlsOptions {
  /** Keystone token, or undefined for no-auth services. */
  token?: string;
  /** The endpoint of TYPE; undefined if the cloud has none (never for a required service). */
  endpoint(type: ServiceType): string | undefined;
}

export async function openSession(input: SessionInput): Promise<OpenStackSession> {
  const env = input.env ?? process.env;
  const cloud = await loadCloud(input.cloud, env);
  const cacertPath = input.cacert ?? cloud.cacert;
  const ca = cacertPath ? await readFile(cacertPath, 'utf8').catch(() => { throw new AuthError(`cannot read CA bundle ${cacertPath}`); }) : undefined;
  const tls: TlsOptions = { ...(ca ? { ca } : {}), verifyTls: !(input.insecure || cloud.verify === false) };
  const given = (type: ServiceType) => input.endpoints?.[type] ?? configuredEndpoint(cloud, type, input.primary);
  const noAuth = /^(none|noauth)$/i.test(cloud.auth_type ?? '');
  const token = noAuth ? undefined : input.token ?? cloud.token ?? env.OS_TOKEN ?? env.OS_AUTH_TOKEN;
  const allGiven = input.required.every((t) => given(t));

  if (noAuth || (allGiven && (token || !cloud.auth_url))) {
    const missing = input.required.find((t) => !given(t));
    if (missing) throw new AuthError(input.missing);
    return { ...tls, ...(token ? { token } : {}), endpoint: given };
  }
  if (!cloud.auth_url) throw new AuthError(input.missing);
  const ks = await keystoneToken(cloud, tls);
  const endpoint = (type: ServiceType) => given(type) ?? catalogEndpoint(ks.catalog, type, cloud);
  for (const type of input.required) {
    if (!endpoint(type)) {
      throw new AuthError(`no ${catalogInterface(cloud)} ${type} endpoint${cloud.region_name ? ` in region ${cloud.region_name}` : ''} in the Keystone catalog`);
    }
  }
  return { ...tls, token: ks.token, endpoint };
}

function configuredEndpoint(c: CloudConfig, type: ServiceType, primary: ServiceType | undefined): string | undefined {
  return c[`${type}_endpoint_override`] ?? (type === 'image' ? c.image_endpoint : undefined) ?? (type === primary ? c.endpoint : undefined);
}
