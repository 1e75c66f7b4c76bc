// `bmsnap agent`: the ramdisk agent. Configuration comes from the kernel command line
// (ipa-api-url, ipa-agent-token, BOOTIF, ...), and flags override it.
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';
import { createLogger } from '../log.js';
import { configFromCmdline, nicMacs, readCmdline } from '../ipa/cmdline.js';
import { startAgent } from '../ipa/agent.js';

export const AGENT_USAGE = `usage: bmsnap agent [options]

Runs the ironic-python-agent compatible agent: serves the agent API, looks the node up in
Ironic, heartbeats, and runs the snapshot service step when the conductor asks.

options (each overrides the kernel command line):
      --cmdline PATH        read parameters from PATH instead of /proc/cmdline
      --api-url URL         Ironic API (ipa-api-url)
      --node-uuid UUID      skip MAC lookup (ipa-node-uuid)
      --token-file PATH     pre-generated agent token (ipa-agent-token)
      --listen HOST         listen address (default 0.0.0.0)
      --port N              listen port (default 9999)
      --advertise-host IP   address Ironic calls back on (default: the one used to reach Ironic)
      --no-tls              plain HTTP (when [agent]require_tls is False)
      --insecure            do not verify Ironic's TLS certificate
      --heartbeat-seconds N heartbeat period (default: from Ironic's heartbeat_timeout)
  -h, --help                this help`;

export async function agentCommand(argv: string[], signal: AbortSignal): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        cmdline: { type: 'string' }, 'api-url': { type: 'string' }, 'node-uuid': { type: 'string' },
        'token-file': { type: 'string' }, listen: { type: 'string' }, port: { type: 'string' },
        'advertise-host': { type: 'string' }, 'no-tls': { type: 'boolean' }, insecure: { type: 'boolean' },
        'heartbeat-seconds': { type: 'string' }, help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message.split('\n')[0]!);
  }
  if (values.help) { process.stdout.write(AGENT_USAGE + '\n'); return; }
  const config = configFromCmdline(await readCmdline(values.cmdline), await nicMacs());
  if (values['api-url']) config.apiUrls = [values['api-url']];
  if (values['node-uuid']) config.nodeUuid = values['node-uuid'];
  if (values['token-file']) config.agentToken = (await readFile(values['token-file'], 'utf8').catch(() => { throw new UsageError(`cannot read ${values['token-file']}`); })).trim();
  if (values.listen) config.listenHost = values.listen;
  if (values.port) {
    const p = Number(values.port);
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new UsageError('--port must be 1-65535');
    config.listenPort = p;
  }
  if (values['advertise-host']) config.advertiseHost = values['advertise-host'];
  if (values['no-tls']) config.autoTls = false;
  if (values.insecure) config.insecure = true;
  if (values['heartbeat-seconds']) config.heartbeatSeconds = Number(values['heartbeat-seconds']);

  const log = createLogger({ human: false });
  const agent = await startAgent(config, log, { signal });
  await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  log.info('stopping');
  await agent.stop();
}
