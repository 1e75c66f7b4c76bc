// Finds the Glance endpoint and a token (agent/src/openstack/session.ts does the work):
//  1. an explicit endpoint + token (what the Ironic conductor hands the agent), or
//  2. Keystone v3 with the usual settings: OS_* environment variables, or a clouds.yaml entry
//     (--os-cloud / OS_CLOUD), with password or application-credential auth; the image
//     endpoint comes from the token's service catalog.
import { openSession } from '../openstack/session.js';
import type { GlanceConnection } from './client.js';

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

export async function resolveGlance(input: AuthInput): Promise<GlanceConnection> {
  const s = await openSession({
    ...input,
    ...(input.endpoint ? { endpoints: { image: input.endpoint } } : {}),
    required: ['image'],
    missing: 'no Glance to talk to: give --glance-url (and a token in OS_TOKEN or --token-file), or OpenStack credentials (OS_AUTH_URL + OS_* variables, or --os-cloud)',
  });
  return { endpoint: s.endpoint('image')!, ...(s.token ? { token: s.token } : {}), ...(s.ca ? { ca: s.ca } : {}), verifyTls: s.verifyTls !== false };
}
