// The ramdisk agent: serve the IPA-compatible API, look the node up, heartbeat until stopped.
import { setTimeout as sleep } from 'node:timers/promises';
import { isIPv6 } from 'node:net';
import type { Logger } from 'pino';
import { VERSION } from '../version.js';
import type { AgentConfig } from './cmdline.js';
import { CommandRunner } from './command-runner.js';
import { deployExtension } from './extensions/deploy.js';
import { imageExtension } from './extensions/image.js';
import { logExtension } from './extensions/log.js';
import { serviceExtension } from './extensions/service.js';
import { standbyExtension } from './extensions/standby.js';
import { Heartbeater } from './heartbeater.js';
import { IronicApi, IronicApiError, type LookupResult } from './ironic-api.js';
import { buildServer } from './server.js';
import { selfSignedCertificate } from './tls.js';

export interface RunningAgent {
  nodeUuid: string;
  callbackUrl: string;
  stop(): Promise<void>;
}

const MIN_TOKEN_LENGTH = 32;

export async function startAgent(config: AgentConfig, log: Logger, opts: { logFile?: string; signal?: AbortSignal } = {}): Promise<RunningAgent> {
  if (!config.apiUrls.length) throw new IronicApiError('no Ironic API URL (ipa-api-url on the kernel command line, or --api-url)');
  const api = new IronicApi(config.apiUrls[0]!, { insecure: config.insecure, ...(config.globalRequestId ? { requestId: config.globalRequestId } : {}) });
  const advertise = config.advertiseHost ?? await api.localAddress();
  const tls = config.autoTls ? await selfSignedCertificate(advertise) : undefined;
  let token = config.agentToken;
  const runner = new CommandRunner();
  const server = buildServer({
    runner,
    extensions: [serviceExtension({ log }), deployExtension({ log }), imageExtension(), logExtension({ ...(opts.logFile ? { logFile: opts.logFile } : {}) }), standbyExtension()],
    token: () => token,
    version: VERSION,
    startedAt: Date.now() / 1000,
    status: () => {
      const r = runner.running();
      return r ? { running: { command_name: r.command_name, ...(r.command_result as object | null ?? {}) } } : {};
    },
    ...(tls ? { https: tls } : {}),
    log,
  });
  await server.listen({ host: config.listenHost, port: config.listenPort });
  const host = isIPv6(advertise) ? `[${advertise}]` : advertise;
  const callbackUrl = `${tls ? 'https' : 'http'}://${host}:${config.advertisePort ?? config.listenPort}`;
  log.info({ callbackUrl, tls: !!tls }, 'agent API listening');

  let lookup: LookupResult | undefined;
  // With a pre-generated token and the node UUID (virtual media, or the bmsnap conductor plugin)
  // there is nothing to look up - and Ironic < 35 refuses lookup in "service wait" anyway.
  if (config.nodeUuid && config.agentToken) lookup = { node: { uuid: config.nodeUuid }, config: {} };
  for (let attempt = 0; !lookup; attempt++) {
    if (opts.signal?.aborted) break;
    try {
      lookup = await api.lookup(config.macs, config.nodeUuid);
    } catch (err) {
      const wait = [5, 10, 30][Math.min(attempt, 2)]!;
      log.warn({ error: (err as Error).message, retryInSeconds: wait }, 'lookup failed');
      await sleep(wait * 1000, undefined, opts.signal ? { signal: opts.signal } : {}).catch(() => {});
    }
  }
  if (!lookup) { await server.close(); await api.close(); throw new IronicApiError('stopped before lookup succeeded'); }
  const issued = lookup.config.agent_token;
  if (typeof issued === 'string' && issued.length >= MIN_TOKEN_LENGTH) token = issued;
  if (!token) { await server.close(); await api.close(); throw new IronicApiError('Ironic issued no agent token and none was given on the command line'); }
  const nodeUuid = lookup.node.uuid;
  const timeout = Number(lookup.config.heartbeat_timeout ?? 300);
  log.info({ node: nodeUuid, heartbeatTimeout: timeout }, 'lookup done');

  const heartbeater = new Heartbeater(
    () => api.heartbeat(nodeUuid, { callback_url: callbackUrl, agent_token: token!, agent_version: VERSION, ...(tls ? { agent_verify_ca: tls.cert } : {}) }),
    // While a step runs, beat at least every ~30 s: each heartbeat is when the conductor plugin
    // copies the step's progress onto the node, and what keeps service wait from timing out.
    () => Math.min(config.heartbeatSeconds ? config.heartbeatSeconds / 0.45 : timeout, runner.running() ? 60 : Infinity),
    log,
  );
  runner.onAsyncDone = () => heartbeater.force();
  heartbeater.start();

  return {
    nodeUuid,
    callbackUrl,
    async stop() {
      heartbeater.stop();
      runner.abortAll();
      await server.close();
      await api.close();
    },
  };
}
