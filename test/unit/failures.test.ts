// Failure paths of the pipeline that the real stack cannot produce on demand here: a read error
// in the middle of the disk (no device-mapper "error" target on this host), and a source that
// changes between the sizing and the writing pass. Both must fail with the right error class
// and leave no output behind.
import t from 'tap';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { imageDisk } from '../../agent/src/image-disk.js';
import { openSource, type Source } from '../../agent/src/source/open-source.js';
import { FileSink } from '../../agent/src/sink/file-sink.js';
import { SourceError, SourceChangedError } from '../../agent/src/errors.js';
import { buildDiskMap } from '../../agent/src/map/build-map.js';
import type { Sink } from '../../agent/src/sink/sink.js';

const MiB = 2 ** 20;

function workdir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'bmsnap-fail-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A raw disk with no partition table: all of it is "unknown", so every byte is read. */
function rawDisk(dir: string): string {
  const path = join(dir, 'disk.raw');
  writeFileSync(path, Buffer.concat([randomBytes(8 * MiB), Buffer.alloc(8 * MiB), randomBytes(8 * MiB)]));
  return path;
}

/** Wraps a real source; `hook` can throw or alter the bytes of each read. */
function wrap(src: Source, hook: (buf: Uint8Array, position: number) => void): Source {
  return Object.assign(Object.create(src) as Source, {
    async readExact(buf: Uint8Array, position: number) {
      await src.readExact(buf, position);
      hook(buf, position);
    },
  });
}

/** A stream (not seekable) sink around a file, so the two-pass path is exercised. */
function streamOf(sink: FileSink): Sink {
  return { description: sink.description, write: (c) => sink.write(c), finish: () => sink.finish(), abort: () => sink.abort() };
}

t.test('an I/O error in the middle of the disk: SourceError, no output left', async (t) => {
  const dir = workdir(t);
  const src = await openSource(rawDisk(dir));
  t.teardown(() => src.close());
  const failing = wrap(src, (_buf, position) => {
    if (position >= 12 * MiB) throw new SourceError(`read error on ${src.path} at byte ${position}: input/output error`);
  });
  for (const [label, mkSink] of [['file', (s: FileSink) => s], ['stream', streamOf]] as const) {
    const out = join(dir, `out-${label}.qcow2`);
    const sink = mkSink(await FileSink.create(out));
    await t.rejects(imageDisk(failing, sink, { format: 'qcow2', codec: 'zstd' }), SourceError, label);
    t.same(readdirSync(dir).filter((f) => f !== 'disk.raw'), [], `${label}: no output and no temp file`);
  }
});

t.test('a source that changes between the passes: SourceChangedError', async (t) => {
  const dir = workdir(t);
  const src = await openSource(rawDisk(dir));
  t.teardown(() => src.close());
  let reads = 0;
  const firstPassReads = Math.ceil((24 * MiB) / (2 * MiB));
  const changing = wrap(src, (buf) => {
    // Writing pass (after the sizing pass read every batch): the first cluster turns to zeros.
    if (++reads > firstPassReads) buf.fill(0, 0, 65536);
  });
  const out = join(dir, 'out.qcow2');
  const sink = streamOf(await FileSink.create(out));
  // No frame cache: the writing pass re-reads every cluster and so sees the change.
  await t.rejects(imageDisk(changing, sink, { format: 'qcow2', codec: 'zstd', frameCacheBytes: 0 }), SourceChangedError);
  t.same(readdirSync(dir).filter((f) => f !== 'disk.raw'), []);
});

t.test('with the whole image in the frame cache the writing pass reads nothing more', async (t) => {
  const dir = workdir(t);
  const src = await openSource(rawDisk(dir));
  t.teardown(() => src.close());
  const map = await buildDiskMap(src, src.sectorSize); // built first: only the encoder's reads count
  let reads = 0;
  const counting = wrap(src, () => { reads++; });
  const out = join(dir, 'out.qcow2');
  const m = await imageDisk(counting, streamOf(await FileSink.create(out)), { format: 'qcow2', codec: 'zstd', frameCacheBytes: 64 * MiB, map });
  t.equal(reads, Math.ceil((24 * MiB) / (2 * MiB)), 'one read per batch: the sizing pass only');
  t.equal(m.qcow2?.cachedClusters, m.qcow2?.mappedClusters, 'every mapped cluster came from the cache');
});
