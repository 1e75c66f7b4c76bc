// The Glance and auth options shared by `bmsnap image --glance` and `bmsnap now`: their
// parseArgs spec, their help text, and the connection they resolve to.
import { readFile } from 'node:fs/promises';
import { UsageError } from '../errors.js';
import type { GlanceConnection } from '../glance/client.js';

export const GLANCE_OPTIONS = {
  glance: { type: 'string' },
  'glance-url': { type: 'string' },
  'token-file': { type: 'string' },
  'os-cloud': { type: 'string' },
  cacert: { type: 'string' },
  insecure: { type: 'boolean' },
  visibility: { type: 'string' },
  property: { type: 'string', multiple: true },
} as const;

export const GLANCE_USAGE = `      --glance NAME       create image NAME and upload into it
      --glance-url URL    Glance endpoint (or OS_IMAGE_URL); token from OS_TOKEN or --token-file
      --token-file PATH   read the token from PATH (tokens never go on the command line)
      --os-cloud CLOUD    use CLOUD from clouds.yaml (or OS_CLOUD); else OS_AUTH_URL + OS_*
      --cacert PATH       trust this CA bundle; --insecure skips TLS verification
      --visibility V      private (default), shared, community or public
      --property K=V      extra image property (repeatable)`;

export interface GlanceOptionValues {
  'glance-url'?: string | undefined;
  'token-file'?: string | undefined;
  'os-cloud'?: string | undefined;
  cacert?: string | undefined;
  insecure?: boolean | undefined;
}

/** The endpoint and token the options (or OS_* / clouds.yaml) lead to. */
export async function glanceConnection(values: GlanceOptionValues): Promise<GlanceConnection> {
  const { resolveGlance } = await import('../glance/auth.js');
  const file = values['token-file'];
  const token = file ? (await readFile(file, 'utf8').catch(() => { throw new UsageError(`cannot read --token-file ${file}`); })).trim() : undefined;
  return resolveGlance({
    ...(values['glance-url'] ? { endpoint: values['glance-url'] } : {}),
    ...(token ? { token } : {}),
    ...(values['os-cloud'] ? { cloud: values['os-cloud'] } : {}),
    ...(values.cacert ? { cacert: values.cacert } : {}),
    insecure: values.insecure === true,
  });
}
