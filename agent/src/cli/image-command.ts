// `bmsnap image SOURCE -o OUT`: image a disk or raw image file locally.
import { readFile, writeFile } from 'node:fs/promises';
import { parseIndex, sha256Hex, type ClusterIndex } from '../incremental/cluster-index.js';
import { parseArgs } from 'node:util';
import { UsageError, OutputError } from '../errors.js';
import { choice, integer, keyValues, oneLine } from '../options.js';
import { imageDisk, type ImageFormat } from '../image-disk.js';
import type { CodecName } from '../encoder/compress/codecs.js';
import { createLogger } from '../log.js';
import { openSource } from '../source/open-source.js';
import { FileSink } from '../sink/file-sink.js';
import { StdoutSink } from '../sink/stdout-sink.js';
import type { Sink } from '../sink/sink.js';
import { logProgress, terminalProgress } from './progress-display.js';
import { checkedRelative, parseOperations } from '../scrub/operations.js';
import { GLANCE_OPTIONS, GLANCE_USAGE, glanceConnection } from './glance-options.js';
import { checkOutputPath } from './output-path.js';

export const IMAGE_USAGE = `usage: bmsnap image SOURCE -o OUT [options]
       bmsnap image SOURCE --glance NAME [glance options] [options]

Images SOURCE (a block device or a raw disk image file, opened read-only) into OUT
(a file, or - for stdout), or straight into a new Glance image, copying only the blocks
its filesystems use.

options:
  -o, --output OUT        output file, or - for stdout
  -f, --format FMT        qcow2 (default) or raw
  -c, --compress CODEC    qcow2 compression: zstd (default; qemu >= 5.1), zlib (any qemu), none
      --level N           compression level (default 1; zstd -7..19, zlib 0..9)
      --workers N         compression threads (default: one per core)
      --stream-cache SIZE qcow2 to a stream (stdout, Glance): memory for compressed data kept
                          from the sizing pass so it is not compressed twice, e.g. 512M, 4G, 0
                          (default: a quarter of available memory, at most 2G)
incremental (qcow2; docs/incremental.md):
      --index PATH        with -o: also write the image's cluster index (a digest per 64 KiB
                          cluster) to PATH, for a later --parent-index
      --no-index          with --glance: store no index (by default a qcow2 in Glance has
                          its index beside it, a hidden image; --with-index says so explicitly)
      --parent-index PATH with -o: write a DELTA holding only the clusters that differ from the
                          image whose index is PATH (read it over that image, e.g.
                          qemu-img rebase -u -b PARENT)
      --parent IMAGE      with --glance: upload a DELTA against Glance image IMAGE (which has an
                          index), recorded in the properties bmsnap_parent_image and
                          bmsnap_parent_index_sha256; stores this image's index too
      --or-full           with --parent: if the parent has no usable index (none, gone,
                          damaged), take a full image instead of stopping (with a warning)
      --json              print the manifest (sizes, sha512, md5, map) as JSON on stdout
      --manifest PATH     write the manifest as JSON to PATH
  -q, --quiet             no progress output, only warnings and errors
      --log-level LEVEL   pino log level for JSON logs (default info)
  -h, --help              this help

glance options (the image streams into Glance: no local copy; verified; deleted on failure):
${GLANCE_USAGE}
      --retries N         fresh-image retries on Glance/network failures (default 2)
      --keep-failed       keep a failed image for debugging instead of deleting it

scrub (a shareable image: per-machine state removed from the IMAGE; SOURCE is never written):
      --scrub             on a copy-on-write overlay of SOURCE (device-mapper snapshot, COW in
                          RAM), remove SSH host keys, machine-id, cloud-init state, logs, shell
                          histories, DHCP leases and temp files from each Linux root filesystem
      --scrub-ops LIST    operations instead of the defaults (default, ssh-hostkeys, machine-id,
                          cloud-init, logs, shell-history, dhcp-leases, tmp, ssh-userdir)
      --scrub-path PATH   also remove PATH (absolute, in each Linux root; repeatable)`;

export async function imageCommand(argv: string[], signal: AbortSignal): Promise<void> {
  const { values, positionals } = parse(argv);
  if (values.help) { process.stdout.write(IMAGE_USAGE + '\n'); return; }
  if (positionals.length !== 1) throw new UsageError('image takes exactly one SOURCE (see bmsnap image --help)');
  const sourcePath = positionals[0]!;
  const out = values.output;
  if (out && values.glance) throw new UsageError('choose one of -o OUT and --glance NAME');
  if (!out && !values.glance) throw new UsageError('missing -o OUT (a file, or - for stdout) or --glance NAME');
  const format = choice(values.format ?? 'qcow2', ['qcow2', 'raw'], '--format') as ImageFormat;
  const codec = choice(values.compress ?? 'zstd', ['zstd', 'zlib', 'none'], '--compress') as CodecName;
  if (format === 'raw' && values.compress) throw new UsageError('--compress applies to qcow2 only');
  const level = values.level === undefined ? undefined : integer(values.level, '--level', codec === 'zstd' ? [-7, 19] : [0, 9]);
  const workers = values.workers === undefined ? undefined : integer(values.workers, '--workers', [1, 256]);
  const frameCacheBytes = values['stream-cache'] === undefined ? undefined : byteSize(values['stream-cache'], '--stream-cache');
  const properties = keyValues(values.property ?? [], '--property');
  const visibility = choice(values.visibility ?? 'private', ['private', 'shared', 'community', 'public'], '--visibility') as 'private';
  const retries = values.retries === undefined ? 2 : integer(values.retries, '--retries', [0, 10]);
  if (values.json && out === '-') throw new UsageError('--json prints on stdout, which carries the image with -o -; use --manifest PATH');
  if (!values.scrub && (values['scrub-ops'] || values['scrub-path'])) throw new UsageError('--scrub-ops and --scrub-path need --scrub');
  const scrubOps = values.scrub ? parseOperations(values['scrub-ops']) : undefined;
  const scrubPaths = (values['scrub-path'] ?? []).map((p) => { checkedRelative(p); return p; });
  const incremental = values.index !== undefined || values['with-index'] === true || values['parent-index'] !== undefined || values.parent !== undefined;
  if (incremental && format !== 'qcow2') throw new UsageError('--index, --with-index, --parent and --parent-index need --format qcow2');
  if (values['no-index'] && (values['with-index'] || values.parent)) throw new UsageError('--no-index excludes --with-index and --parent (a delta stores its index)');
  if (!values.glance && values['no-index']) throw new UsageError('--no-index goes with --glance (with -o, no --index PATH means no index)');
  if (values.glance && values['parent-index']) throw new UsageError('with --glance the parent is a Glance image: --parent IMAGE');
  if (!values.glance && values.parent) throw new UsageError('--parent IMAGE goes with --glance; with -o use --parent-index PATH');
  if (values.glance && values.index !== undefined) throw new UsageError('with --glance the index goes into Glance: --with-index (no PATH)');
  if (!values.glance && values['with-index']) throw new UsageError('--with-index goes with --glance; with -o use --index PATH');
  if (values['or-full'] && !values.parent) throw new UsageError('--or-full goes with --parent IMAGE');
  const parentIndex = values['parent-index'] ? await readParentIndex(values['parent-index']) : undefined;

  const human = process.stderr.isTTY === true;
  const logLevel = values['log-level'] ?? (values.quiet ? 'warn' : 'info');
  const log = createLogger({ human, level: logLevel });
  const progress = values.quiet ? undefined : human ? terminalProgress() : logProgress(log);

  // The path actually read: SOURCE, or the scrubbed overlay over it.
  const imageFrom = async (path: string): Promise<void> => {
  if (values.glance) {
    const [{ GlanceClient }, { publishToGlance }] = await Promise.all([import('../glance/client.js'), import('../glance/publish.js')]);
    const conn = await glanceConnection(values);
    const client = new GlanceClient(conn);
    const source = await openSource(path);
    try {
      const { image, manifest, attempts } = await publishToGlance(source, client, {
        name: values.glance, visibility, format, codec, retries, keepFailed: values['keep-failed'] === true,
        properties: { ...(scrubOps ? { bmsnap_scrubbed: scrubOps.map((o) => o.name).join(',') } : {}), ...properties },
        captureMethod: 'offline-cli', signal, log,
        ...(values['no-index'] ? { index: false } : {}),
        ...(values.parent ? { parent: { imageId: values.parent, orFull: values['or-full'] === true } } : {}),
        ...(level !== undefined ? { level } : {}),
        ...(workers !== undefined ? { workers } : {}),
        ...(frameCacheBytes !== undefined ? { frameCacheBytes } : {}),
        ...(progress ? { progress } : {}),
      });
      progress?.done();
      const full = { ...manifest, glance: { endpoint: client.base, imageId: image.id, name: image.name, status: image.status, attempts } };
      if (values.manifest) await writeFile(values.manifest, JSON.stringify(full, null, 2) + '\n');
      if (values.json) process.stdout.write(JSON.stringify(full, null, 2) + '\n');
      log.info({ image: image.id, bytes: manifest.bytesWritten, sha512: manifest.sha512, seconds: Math.round(manifest.seconds * 10) / 10 }, 'glance image active');
      process.stderr.write(`bmsnap: glance image ${image.id} active: ${manifest.bytesWritten} bytes, sha512 verified\n`);
    } finally {
      await source.close();
      await client.close();
    }
    return;
  }

  const source = await openSource(path);
  let sink: Sink | undefined;
  try {
    if (out === '-') {
      if (process.stdout.isTTY) throw new UsageError('refusing to write an image to a terminal; use -o FILE or a pipe');
      sink = new StdoutSink();
    } else {
      await checkOutputPath(out!, [sourcePath], 'the source itself');
      sink = await FileSink.create(out!);
    }
    let indexBytes: Buffer | undefined;
    const manifest = await imageDisk(source, sink, {
      format, codec, signal, log,
      ...(values.index || parentIndex ? { index: { onIndex: (b: Buffer) => { indexBytes = b; }, ...(parentIndex ? { parent: parentIndex } : {}) } } : {}),
      ...(level !== undefined ? { level } : {}),
      ...(workers !== undefined ? { workers } : {}),
      ...(frameCacheBytes !== undefined ? { frameCacheBytes } : {}),
      ...(progress ? { progress } : {}),
    });
    progress?.done();
    if (values.index) {
      await writeFile(values.index, indexBytes!).catch((err: Error) => { throw new OutputError(`cannot write cluster index ${values.index}: ${err.message}`); });
    }
    const json = JSON.stringify(manifest, null, 2) + '\n';
    if (values.manifest) {
      await writeFile(values.manifest, json).catch((err: Error) => { throw new OutputError(`cannot write manifest ${values.manifest}: ${err.message}`); });
    }
    if (values.json) process.stdout.write(json);
    log.info({ out, bytes: manifest.bytesWritten, sha512: manifest.sha512, seconds: Math.round(manifest.seconds * 10) / 10 }, 'image complete');
    if (human && !values.quiet && !values.json) {
      process.stderr.write(`bmsnap: wrote ${out === '-' ? 'stdout' : out}: ${manifest.bytesWritten} bytes (${manifest.format}${manifest.format === 'qcow2' ? `, ${manifest.compression}` : ''}) in ${manifest.seconds.toFixed(1)} s, sha512 ${manifest.sha512.slice(0, 16)}…\n`);
    }
  } finally {
    await source.close();
  }
  };

  if (!scrubOps) return imageFrom(sourcePath);
  const [{ withScrubbedOverlay }, { buildDiskMap }] = await Promise.all([import('../scrub/overlay.js'), import('../map/build-map.js')]);
  const disk = await openSource(sourcePath);
  const map = await buildDiskMap(disk, disk.sectorSize).finally(() => disk.close());
  await withScrubbedOverlay(sourcePath, map, { operations: scrubOps, paths: scrubPaths, log }, (overlay) => imageFrom(overlay));
}

function parse(argv: string[]) {
  return oneLine(() => parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' },
      format: { type: 'string', short: 'f' },
      compress: { type: 'string', short: 'c' },
      level: { type: 'string' },
      workers: { type: 'string' },
      'stream-cache': { type: 'string' },
      json: { type: 'boolean' },
      manifest: { type: 'string' },
      quiet: { type: 'boolean', short: 'q' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      ...GLANCE_OPTIONS,
      retries: { type: 'string' },
      'keep-failed': { type: 'boolean' },
      scrub: { type: 'boolean' },
      'scrub-ops': { type: 'string' },
      'scrub-path': { type: 'string', multiple: true },
      index: { type: 'string' },
      'with-index': { type: 'boolean' },
      'no-index': { type: 'boolean' },
      'parent-index': { type: 'string' },
      parent: { type: 'string' },
      'or-full': { type: 'boolean' },
    },
  }));
}

async function readParentIndex(path: string): Promise<{ index: ClusterIndex; sha256: string }> {
  const bytes = await readFile(path).catch((err: NodeJS.ErrnoException) => { throw new UsageError(`cannot read parent index ${path}: ${err.code ?? err.message}`); });
  return { index: parseIndex(bytes, `parent index ${path}`), sha256: sha256Hex(bytes) };
}

/** "0", "512M", "4G", "1.5G", "65536" (bytes; K/M/G/T are powers of 1024). */
function byteSize(v: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)i?B?$/i.exec(v.trim());
  if (!m) throw new UsageError(`${flag} wants a size such as 512M or 2G (got "${v}")`);
  return Math.floor(Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase()));
}
