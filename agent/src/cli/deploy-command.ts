// `bmsnap deploy`: writes an image chain (a delta and its parents, or one full image) onto a
// disk, as the ramdisk does for the bmsnap deploy interface: only the clusters the image maps,
// each checked against the top image's cluster index.
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';
import { oneLine } from '../options.js';
import { createLogger } from '../log.js';
import { writeChain } from '../deploy/write-chain.js';
import { chainArgs } from './chain-args.js';
import { logProgress, terminalProgress } from './progress-display.js';
import { GLANCE_OPTIONS, GLANCE_USAGE, glanceConnection } from './glance-options.js';

export const DEPLOY_USAGE = `usage: bmsnap deploy IMAGE --to DEVICE [glance options]
       bmsnap deploy TOP.qcow2 [PARENT.qcow2 ...] --index TOP.index --to DEVICE

Writes Glance image IMAGE (with its parents, if it is a delta) or local bmsnap qcow2 files (the
delta first) onto DEVICE: the clusters the image maps, nothing else; every cluster is checked
against the top image's cluster index before it is written. DEVICE's previous content is lost.
A GPT's backup copy is moved to the end of a DEVICE larger than the image.

options:
      --to DEVICE         the disk (or file) to write; refused while it is mounted
      --index PATH        local files: the cluster index of TOP (from bmsnap image --index)
      --json              print the result as JSON on stdout
  -q, --quiet             no progress output
  -h, --help              this help

glance options (IMAGE is a Glance image id):
${GLANCE_USAGE.split('\n').filter((l) => !/--glance NAME|--visibility|--property/.test(l)).join('\n')}`;

export async function deployCommand(argv: string[], signal: AbortSignal): Promise<void> {
  const { values, positionals } = oneLine(() => parseArgs({
    args: argv, allowPositionals: true,
    options: {
      to: { type: 'string' }, index: { type: 'string' }, json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' }, help: { type: 'boolean', short: 'h' }, ...GLANCE_OPTIONS,
    },
  }));
  if (values.help) { process.stdout.write(DEPLOY_USAGE + '\n'); return; }
  if (!positionals.length) throw new UsageError('deploy needs the image to write (see bmsnap deploy --help)');
  if (!values.to) throw new UsageError('missing --to DEVICE');
  if (values.glance || values.visibility || values.property) throw new UsageError('deploy reads images; --glance, --visibility and --property do not apply');
  if (positionals.includes(values.to)) throw new UsageError(`--to ${values.to} is one of the images to write`);
  const human = process.stderr.isTTY === true;
  const log = createLogger({ human, level: values.quiet ? 'warn' : 'info' });
  const progress = values.quiet ? undefined : human ? terminalProgress() : logProgress(log);
  const { GlanceClient } = await import('../glance/client.js');
  const client = values.index === undefined ? new GlanceClient(await glanceConnection(values)) : undefined;
  try {
    const chain = await chainArgs(positionals, values.index, client, log, signal);
    const stats = await writeChain(await chain.open(), chain.index, values.to, { signal, ...(progress ? { progress } : {}) });
    progress?.done();
    if (values.json) process.stdout.write(JSON.stringify({ ...(chain.topImage ? { image: chain.topImage.id } : { images: positionals }), ...stats }, null, 2) + '\n');
    if (!values.quiet) process.stderr.write(`bmsnap: wrote ${stats.clusters} clusters (${stats.clustersFrom.join(' + ')} by image, top first) and ${stats.zeroClusters} zero clusters to ${values.to}: ${stats.bytesWritten} bytes in ${stats.seconds.toFixed(1)} s${stats.gptRelocated ? '; backup GPT moved to the end of the disk' : ''}\n`);
  } finally {
    await client?.close();
  }
}
