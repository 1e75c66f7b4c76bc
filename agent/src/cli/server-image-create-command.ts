// `bmsnap server-image-create SERVER NAME`: the CLI front of serverImageCreate()
// (agent/src/trigger/server-image-create.ts).
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';
import { createLogger } from '../log.js';
import { integer, keyValues, oneLine } from '../options.js';
import { serverImageCreate, type ServerImageCreateOptions } from '../trigger/server-image-create.js';
import { logProgress, terminalProgress } from './progress-display.js';

export const SERVER_IMAGE_CREATE_USAGE = `usage: bmsnap server-image-create SERVER NAME [--wait] [--parent IMAGE [--or-full]] [options]

Snapshots a bare-metal server into a new Glance image, like \`openstack server image create\`
for a VM: finds the Ironic node of SERVER (a Nova server id or name, or an Ironic node UUID or
name) and starts the bmsnap \`snapshot\` service step on it with your OpenStack credentials.
The node must be active and use the bmsnap deploy interface (docs/runbook.md).

options:
      --name NAME         the image name (instead of the NAME argument)
      --wait              follow the snapshot: progress, then the image id on stdout;
                          exit 1 with the node's last_error if it fails
      --timeout SECONDS   with --wait: stop waiting after SECONDS (the snapshot goes on)
      --visibility V      private (default), shared, community or public
      --property K=V      extra image property (repeatable)
      --disk-format FMT   qcow2 (default) or raw
      --compress CODEC    qcow2 compression: zstd (default; qemu >= 5.1), zlib (any qemu), none
      --root-device K=V   root device hint for the disk to capture (repeatable: name, size,
                          serial, wwn, model, vendor, rotational, by_path; default: the node's
                          root_device property)
      --parent IMAGE      a delta: only the clusters changed since IMAGE, an earlier snapshot
                          of this disk with its cluster index (a Glance image id;
                          docs/incremental.md)
      --or-full           with --parent: a full image if IMAGE has no usable index, instead
                          of failing
      --no-index          store no cluster index beside the image (by default a qcow2 gets
                          one, a hidden image, for later deltas)
      --json              print the result as JSON on stdout
  -q, --quiet             no progress output, only errors
      --log-level LEVEL   pino log level for JSON logs (default info)
  -h, --help              this help

credentials (as the openstack CLI):
      --os-cloud CLOUD    use CLOUD from clouds.yaml (or OS_CLOUD); else OS_AUTH_URL + OS_*
      --ironic-url URL    Ironic endpoint (else the Keystone catalog's baremetal endpoint;
                          OS_AUTH_TYPE=none + OS_ENDPOINT=URL for a no-auth Ironic)
      --nova-url URL      Nova endpoint (else the catalog's compute endpoint, if any)
      --token-file PATH   a Keystone token for --ironic-url / --nova-url (else OS_TOKEN)
      --cacert PATH       trust this CA bundle; --insecure skips TLS verification`;

export async function serverImageCreateCommand(argv: string[], signal: AbortSignal): Promise<void> {
  const { values, positionals } = parse(argv);
  if (values.help) { process.stdout.write(SERVER_IMAGE_CREATE_USAGE + '\n'); return; }
  if (positionals.length === 0) throw new UsageError('missing SERVER and NAME (see bmsnap server-image-create --help)');
  if (positionals.length > 2) throw new UsageError(`too many arguments: ${positionals.slice(2).join(' ')} (SERVER NAME only)`);
  if (positionals[1] !== undefined && values.name !== undefined) throw new UsageError('give NAME once: as the second argument or with --name');
  const name = positionals[1] ?? values.name;
  if (name === undefined) throw new UsageError('missing NAME (the name of the new image; see bmsnap server-image-create --help)');
  if (values.timeout !== undefined && !values.wait) throw new UsageError('--timeout applies to --wait only');

  const human = process.stderr.isTTY === true;
  const log = createLogger({ human, level: values['log-level'] ?? (values.quiet ? 'warn' : 'info') });
  const progress = values.quiet || !values.wait ? undefined : human ? terminalProgress() : logProgress(log);
  const token = values['token-file'] ? (await readFile(values['token-file'], 'utf8').catch(() => { throw new UsageError(`cannot read --token-file ${values['token-file']}`); })).trim() : undefined;

  const options: ServerImageCreateOptions = {
    server: positionals[0]!,
    name,
    wait: values.wait === true,
    ...(values.timeout !== undefined ? { timeoutSeconds: integer(values.timeout, '--timeout', [1, 7 * 86400]) } : {}),
    ...(values.visibility ? { visibility: values.visibility as 'private' } : {}),
    ...(values['disk-format'] ? { diskFormat: values['disk-format'] as 'qcow2' } : {}),
    ...(values.compress ? { compression: values.compress as 'zstd' } : {}),
    properties: keyValues(values.property ?? [], '--property'),
    rootDeviceHints: keyValues(values['root-device'] ?? [], '--root-device'),
    ...(values.parent !== undefined ? { parent: values.parent } : {}),
    ...(values['or-full'] ? { orFull: true } : {}),
    ...(values['no-index'] ? { withIndex: false } : {}),
    auth: {
      ...(values['os-cloud'] ? { cloud: values['os-cloud'] } : {}),
      ...(values['ironic-url'] ? { ironicUrl: values['ironic-url'] } : {}),
      ...(values['nova-url'] ? { novaUrl: values['nova-url'] } : {}),
      ...(token ? { token } : {}),
      ...(values.cacert ? { cacert: values.cacert } : {}),
      insecure: values.insecure === true,
    },
    signal, log,
    ...(progress ? { progress } : {}),
    onState: (n) => {
      if (values.quiet) return;
      if (human) process.stderr.write(`\r\x1b[Kbmsnap: node ${n.name ?? n.uuid}: ${n.provision_state}\n`);
      else log.info({ node: n.uuid, provisionState: n.provision_state }, 'node state');
    },
  };
  const r = await serverImageCreate(options);
  progress?.done();
  const node = r.node.name ? `${r.node.name} (${r.node.uuid})` : r.node.uuid;
  const server = r.server ? `server ${r.server.name} (${r.server.id}) on ` : '';
  if (values.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
  } else if (r.state === 'active') {
    process.stdout.write(`${r.imageId}\n`);
  } else {
    process.stdout.write(`snapshot "${r.imageName}" of ${server}node ${node} started\n` +
      `follow it: openstack baremetal node show ${r.node.uuid} -f json -c provision_state -c last_error -c driver_internal_info\n` +
      '(driver_internal_info.bmsnap_snapshot holds the image id and the progress)\n');
  }
  if (r.state === 'active') {
    log.info({ image: r.imageId, node: r.node.uuid, server: r.server?.id, bytes: r.size, seconds: r.seconds,
      ...(r.parentImageId ? { parent: r.parentImageId, delta: r.delta } : {}) }, 'snapshot image active');
    const delta = r.parentImageId ? ` (a delta on ${r.parentImageId}${r.delta?.changed_clusters !== undefined ? `: ${r.delta.changed_clusters} changed clusters` : ''})` : '';
    if (human && !values.quiet && !values.json) process.stderr.write(`bmsnap: image ${r.imageId} ("${r.imageName}") active${delta}: snapshot of ${server}node ${node} in ${r.seconds.toFixed(0)} s\n`);
    for (const w of r.warnings ?? []) log.warn({ image: r.imageId }, w);
  }
}

function parse(argv: string[]) {
  return oneLine(() => parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      name: { type: 'string' },
      wait: { type: 'boolean' },
      timeout: { type: 'string' },
      visibility: { type: 'string' },
      property: { type: 'string', multiple: true },
      'disk-format': { type: 'string' },
      compress: { type: 'string' },
      'root-device': { type: 'string', multiple: true },
      parent: { type: 'string' },
      'or-full': { type: 'boolean' },
      'no-index': { type: 'boolean' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      'os-cloud': { type: 'string' },
      'ironic-url': { type: 'string' },
      'nova-url': { type: 'string' },
      'token-file': { type: 'string' },
      cacert: { type: 'string' },
      insecure: { type: 'boolean' },
    },
  }));
}
