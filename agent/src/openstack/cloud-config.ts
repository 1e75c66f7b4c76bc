// Where a cloud's settings come from, as in the openstack CLI: OS_* environment variables, or an
// entry of clouds.yaml (--os-cloud / OS_CLOUD). Only reads; secrets stay in the returned object.
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { AuthError } from './errors.js';

/** The OpenStack services bmsnap talks to, by catalog type. */
export type ServiceType = 'baremetal' | 'compute' | 'image';
export const SERVICE_TYPES: readonly ServiceType[] = ['baremetal', 'compute', 'image'];

export interface CloudConfig {
  auth_url?: string;
  /** password, v3applicationcredential, token, ... or none (no Keystone: `endpoint` is the service). */
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
  /** auth_type none: the endpoint of the service the command talks to (OS_ENDPOINT). */
  endpoint?: string;
  region_name?: string;
  interface?: string;
  /** Legacy name of image_endpoint_override (OS_IMAGE_URL). */
  image_endpoint?: string;
  baremetal_endpoint_override?: string;
  compute_endpoint_override?: string;
  image_endpoint_override?: string;
  cacert?: string;
  verify?: boolean;
}

const ENV: Record<string, keyof CloudConfig> = {
  OS_AUTH_URL: 'auth_url', OS_AUTH_TYPE: 'auth_type', OS_USERNAME: 'username', OS_USER_ID: 'user_id',
  OS_PASSWORD: 'password', OS_USER_DOMAIN_NAME: 'user_domain_name', OS_USER_DOMAIN_ID: 'user_domain_id',
  OS_PROJECT_NAME: 'project_name', OS_TENANT_NAME: 'project_name', OS_PROJECT_ID: 'project_id', OS_TENANT_ID: 'project_id',
  OS_PROJECT_DOMAIN_NAME: 'project_domain_name', OS_PROJECT_DOMAIN_ID: 'project_domain_id',
  OS_APPLICATION_CREDENTIAL_ID: 'application_credential_id', OS_APPLICATION_CREDENTIAL_NAME: 'application_credential_name',
  OS_APPLICATION_CREDENTIAL_SECRET: 'application_credential_secret', OS_REGION_NAME: 'region_name',
  OS_INTERFACE: 'interface', OS_ENDPOINT: 'endpoint', OS_IMAGE_URL: 'image_endpoint', OS_CACERT: 'cacert',
  OS_BAREMETAL_ENDPOINT_OVERRIDE: 'baremetal_endpoint_override', OS_COMPUTE_ENDPOINT_OVERRIDE: 'compute_endpoint_override',
  OS_IMAGE_ENDPOINT_OVERRIDE: 'image_endpoint_override',
};

/** Reads OS_* variables into a CloudConfig (only the ones set). */
export function cloudFromEnv(env: NodeJS.ProcessEnv): CloudConfig {
  const out: Record<string, string> = {};
  for (const [k, field] of Object.entries(ENV)) if (env[k]) out[field] ??= env[k]!;
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
    return { ...rest, ...auth } as CloudConfig;
  }
  throw new AuthError(`cloud "${name}" not found in clouds.yaml (looked in ${candidates.join(', ')})`);
}

/** clouds.yaml (--os-cloud / OS_CLOUD) if one is named, else the OS_* variables. */
export function loadCloud(cloud: string | undefined, env: NodeJS.ProcessEnv): Promise<CloudConfig> {
  const name = cloud || env.OS_CLOUD;
  return name ? loadCloudsYaml(name, env) : Promise.resolve(cloudFromEnv(env));
}
