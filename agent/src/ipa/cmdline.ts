// Agent configuration from the kernel command line, as ironic-python-agent reads it
// (ipa-api-url, ipa-agent-token, BOOTIF, ...), overridable by `bmsnap agent` flags.
import { readFile } from 'node:fs/promises';

export interface AgentConfig {
  /** Ironic API base URLs to try, in order. */
  apiUrls: string[];
  /** Pre-generated agent token (virtual media, or the snapshot plugin's lookup workaround). */
  agentToken?: string;
  /** Node UUID when it is known in advance (lets the agent skip lookup). */
  nodeUuid?: string;
  /** MAC addresses for lookup (BOOTIF first, then every NIC). */
  macs: string[];
  listenHost: string;
  listenPort: number;
  /** Address Ironic should call back on (default: the source address used to reach Ironic). */
  advertiseHost?: string;
  /** Port Ironic should call back on, when a NAT or port forward sits in between (default: listenPort). */
  advertisePort?: number;
  /** Serve HTTPS with a self-signed certificate sent as agent_verify_ca (IPA's auto-TLS). */
  autoTls: boolean;
  /** Skip TLS verification towards Ironic (ipa-insecure=1). */
  insecure: boolean;
  globalRequestId?: string;
  /** Heartbeat period override in seconds (default: from lookup's heartbeat_timeout). */
  heartbeatSeconds?: number;
}

/** Parses `key=value` words; bare words become "true". Quoted values are not used by Ironic. */
export function parseCmdline(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const word of text.trim().split(/\s+/)) {
    if (!word) continue;
    const i = word.indexOf('=');
    out.set(i < 0 ? word : word.slice(0, i), i < 0 ? 'true' : word.slice(i + 1));
  }
  return out;
}

/** BOOTIF is "01-aa-bb-cc-dd-ee-ff" (ARP type 1 prefix) or a plain MAC. */
export function bootifMac(v: string | undefined): string | undefined {
  if (!v) return undefined;
  const hex = v.toLowerCase().replace(/^01-/, '').replace(/[-:]/g, '');
  return /^[0-9a-f]{12}$/.test(hex) ? hex.match(/../g)!.join(':') : undefined;
}

const truthy = (v: string | undefined) => v !== undefined && ['1', 'true', 'yes', 'on'].includes(v.toLowerCase());

export function configFromCmdline(args: Map<string, string>, nicMacs: string[]): AgentConfig {
  const apiUrls = (args.get('ipa-api-url') ?? '').split(',').map((s) => s.trim()).filter((s) => s && s !== 'mdns');
  const boot = bootifMac(args.get('BOOTIF'));
  const port = Number(args.get('ipa-listen-port') ?? 9999);
  const advertisePort = Number(args.get('ipa-advertise-port'));
  return {
    apiUrls,
    ...(args.get('ipa-agent-token') ? { agentToken: args.get('ipa-agent-token')! } : {}),
    ...(args.get('ipa-node-uuid') ?? args.get('bmsnap-node-uuid') ? { nodeUuid: (args.get('ipa-node-uuid') ?? args.get('bmsnap-node-uuid'))! } : {}),
    macs: [...new Set([...(boot ? [boot] : []), ...nicMacs])],
    listenHost: args.get('ipa-listen-host') ?? '0.0.0.0',
    listenPort: Number.isInteger(port) && port > 0 && port < 65536 ? port : 9999,
    ...(args.get('ipa-advertise-host') ? { advertiseHost: args.get('ipa-advertise-host')! } : {}),
    ...(Number.isInteger(advertisePort) && advertisePort > 0 && advertisePort < 65536 ? { advertisePort } : {}),
    autoTls: !truthy(args.get('ipa-disable-auto-tls')),
    insecure: truthy(args.get('ipa-insecure')),
    ...(args.get('ipa-global-request-id') ? { globalRequestId: args.get('ipa-global-request-id')! } : {}),
  };
}

export async function readCmdline(path = '/proc/cmdline'): Promise<Map<string, string>> {
  return parseCmdline(await readFile(path, 'utf8').catch(() => ''));
}

/** MACs of the machine's NICs (not loopback, not virtual), from /sys/class/net. */
export async function nicMacs(): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  const names = await readdir('/sys/class/net').catch(() => [] as string[]);
  const out: string[] = [];
  for (const n of names) {
    if (n === 'lo') continue;
    const mac = (await readFile(`/sys/class/net/${n}/address`, 'utf8').catch(() => '')).trim();
    if (/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac) && mac !== '00:00:00:00:00:00') out.push(mac);
  }
  return out;
}
