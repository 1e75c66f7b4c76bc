// What every OpenStack API client here shares: one undici Agent per client with the TLS settings
// of the cloud, and one-line descriptions of network failures and of the services' error bodies.
import { Agent } from 'undici';

export interface TlsOptions {
  /** PEM bundle of CAs to trust (only these when set). */
  ca?: string;
  /** Default true. */
  verifyTls?: boolean;
}

/** An undici dispatcher honouring TLS; `options` adds e.g. timeouts. */
export function tlsAgent(tls: TlsOptions, options: Omit<Agent.Options, 'connect'> = {}): Agent {
  return new Agent({ ...options, connect: { rejectUnauthorized: tls.verifyTls !== false, ...(tls.ca ? { ca: tls.ca } : {}) } });
}

const NET_ERRORS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ETIMEDOUT: 'timed out',
  ENOTFOUND: 'host not found',
  UND_ERR_SOCKET: 'connection closed',
  UND_ERR_ABORTED: 'aborted',
  UND_ERR_HEADERS_TIMEOUT: 'no answer in time',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'self-signed certificate (use --cacert)',
  SELF_SIGNED_CERT_IN_CHAIN: 'untrusted certificate chain (use --cacert)',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'untrusted certificate (use --cacert)',
};

/** "connection refused", "untrusted certificate (use --cacert)", ... for a failed request. */
export function describeNetError(err: unknown): string {
  const e = err as { code?: string; message?: string; cause?: { code?: string; message?: string } };
  const code = e.cause?.code ?? e.code;
  return (code && NET_ERRORS[code]) ?? code ?? e.message ?? String(err);
}

/**
 * The service's own explanation in an error body, on one line ('' if none): Glance's
 * {message} / {error: {message}} / {title}, Ironic's {error_message: "{\"faultstring\": ...}"},
 * Nova's {itemNotFound: {message}}, or the text of an HTML page.
 */
export function explainBody(text: string, max = 200): string {
  let msg = text;
  try {
    const j = JSON.parse(text) as Record<string, unknown>;
    msg = firstMessage(j) ?? '';
  } catch { /* not JSON: the text itself */ }
  return msg.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim().slice(0, max);
}

function firstMessage(j: Record<string, unknown>): string | undefined {
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  const direct = str(j.message) ?? str((j.error as Record<string, unknown> | undefined)?.message) ?? str(j.title);
  if (direct !== undefined) return direct;
  if (j.error_message !== undefined) {
    let em = j.error_message;
    if (typeof em === 'string') {
      try { em = JSON.parse(em); } catch { return em as string; }
    }
    return str((em as Record<string, unknown> | null)?.faultstring);
  }
  const keys = Object.keys(j);
  const only = keys.length === 1 ? j[keys[0]!] : undefined;
  return only && typeof only === 'object' ? str((only as Record<string, unknown>).message) : undefined;
}

/** "Glance answered 413: Image too large", "Nova answered 401 Unauthorized: the token is ...". */
export function answered(service: string, status: number, body: string, max = 200): string {
  if (status === 401) return `${service} answered 401 Unauthorized: the token is missing, invalid or expired`;
  const why = explainBody(body, max);
  return `${service} answered ${status}${why ? `: ${why}` : ''}`;
}
