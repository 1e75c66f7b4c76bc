// `bmsnap flatten`: a delta and its parents -> one standalone qcow2 (for sharing, other sites,
// or ending a long chain). Compressed clusters are copied, not recompressed; every cluster is
// checked against the top image's cluster index.
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';
import { choice, keyValues, oneLine } from '../options.js';
import { createLogger } from '../log.js';
import { FileSink } from '../sink/file-sink.js';
import { sha256Hex } from '../incremental/cluster-index.js';
import { PROP } from '../incremental/glance-index.js';
import { flattenInto, type FlattenManifest } from '../chain/flatten.js';
import { chainArgs } from './chain-args.js';
import { logProgress, terminalProgress } from './progress-display.js';
import { GLANCE_OPTIONS, GLANCE_USAGE, glanceConnection } from './glance-options.js';
import { checkOutputPath } from './output-path.js';
import type { GlanceImage } from '../glance/client.js';

export const FLATTEN_USAGE = `usage: bmsnap flatten IMAGE --glance NAME [glance options]
       bmsnap flatten IMAGE -o OUT [glance options]
       bmsnap flatten TOP.qcow2 PARENT.qcow2 [GRANDPARENT.qcow2 ...] --index TOP.index -o OUT

Makes one standalone qcow2 image of a delta and the images under it: Glance image IMAGE and
its parents (found from bmsnap_parent_image), or local files, the delta first. Compressed
clusters are copied as they are (nothing is recompressed); every cluster is checked against
the delta's cluster index and every Glance image against its sha512 before the result is kept.

options:
  -o, --output OUT        write the image to file OUT
      --index PATH        local files: the cluster index of TOP (from bmsnap image --index)
      --json              print the manifest as JSON on stdout
  -q, --quiet             no progress output
  -h, --help              this help

glance options (IMAGE is a Glance image id; --glance NAME stores the result with its index):
${GLANCE_USAGE}`;

export async function flattenCommand(argv: string[], signal: AbortSignal): Promise<void> {
  const { values, positionals } = oneLine(() => parseArgs({
    args: argv, allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' }, index: { type: 'string' }, json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' }, help: { type: 'boolean', short: 'h' }, ...GLANCE_OPTIONS,
    },
  }));
  if (values.help) { process.stdout.write(FLATTEN_USAGE + '\n'); return; }
  if (!positionals.length) throw new UsageError('flatten needs the image to flatten (see bmsnap flatten --help)');
  if (values.output && values.glance) throw new UsageError('choose one of -o OUT and --glance NAME');
  if (!values.output && !values.glance) throw new UsageError('missing -o OUT or --glance NAME');
  const local = values.index !== undefined;
  if (local && positionals.length < 2) throw new UsageError('local flatten takes the delta and at least its parent: TOP.qcow2 PARENT.qcow2 ... --index TOP.index');
  if (!local && positionals.length !== 1) throw new UsageError('flatten takes one Glance image id (its parents are found from its properties); local files need --index TOP.index');
  const visibility = choice(values.visibility ?? 'private', ['private', 'shared', 'community', 'public'], '--visibility') as 'private';
  const properties = keyValues(values.property ?? [], '--property');
  const human = process.stderr.isTTY === true;
  const log = createLogger({ human, level: values.quiet ? 'warn' : 'info' });
  const progress = values.quiet ? undefined : human ? terminalProgress() : logProgress(log);
  const needsGlance = !local || values.glance !== undefined;

  const { GlanceClient } = await import('../glance/client.js');
  const client = needsGlance ? new GlanceClient(await glanceConnection(values)) : undefined;
  try {
    const chain = await chainArgs(positionals, values.index, client, log, signal);
    const topImage = chain.topImage;
    if (topImage && typeof topImage[PROP.parent] !== 'string') log.warn({ image: topImage.id }, 'the image is not a delta: flattening copies it as it is');
    const opts = { signal, ...(progress ? { progress } : {}) };
    let manifest: FlattenManifest;
    let glanceId: string | undefined;
    if (values.glance) {
      const { publishImage } = await import('../glance/publish-image.js');
      const { image, manifest: m } = await publishImage(client!, {
        name: values.glance, diskFormat: 'qcow2', visibility, withIndex: true, log, signal,
        ...(topImage && typeof topImage.min_disk === 'number' ? { minDisk: topImage.min_disk } : {}),
        properties: { ...inherited(topImage), bmsnap_flattened_from: topImage?.id ?? positionals[0]!, ...properties },
      }, async (sink) => ({ manifest: await flattenInto(await chain.open(), chain.index, sink, opts), indexBytes: chain.indexBytes }));
      manifest = m;
      glanceId = image.id;
    } else {
      await checkOutputPath(values.output!, positionals, 'one of the images being flattened');
      manifest = await flattenInto(await chain.open(), chain.index, await FileSink.create(values.output!), opts);
    }
    progress?.done();
    const full = { ...manifest, clusterIndexSha256: sha256Hex(chain.indexBytes), ...(glanceId ? { glance: { imageId: glanceId } } : {}) };
    if (values.json) process.stdout.write(JSON.stringify(full, null, 2) + '\n');
    const from = manifest.flatten.clustersFrom.map((n, i) => `${n}${i === 0 ? ' from the delta' : ''}`).join(' + ');
    if (!values.quiet) process.stderr.write(`bmsnap: flattened ${manifest.chain.length} images into ${glanceId ? `glance image ${glanceId}` : values.output}: ${manifest.bytesWritten} bytes, ${manifest.flatten.clusters} clusters (${from}), every cluster checked against the index\n`);
  } finally {
    await client?.close();
  }
}

/** The top image's provenance, minus what describes it as a delta or names its own index. */
function inherited(top: GlanceImage | undefined): Record<string, string> {
  const skip = new Set<string>(Object.values(PROP));
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(top ?? {})) if (k.startsWith('bmsnap_') && !skip.has(k) && typeof v === 'string') out[k] = v;
  return out;
}
