// Swap probe (header page only, whole area for a hibernation image) and probeFilesystem on
// partitions nobody recognises.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { FilesystemError } from '../../agent/src/errors.js';
import { probeFilesystem, probes } from '../../agent/src/map/filesystems/index.js';
import { swapProbe } from '../../agent/src/map/filesystems/swap.js';
import { bufferReader } from '../../agent/src/source/byte-reader.js';
import { openSource } from '../../agent/src/source/open-source.js';
import { garbageFile, MiB, patchedReader, probeImage, Scratch, sh, u32le } from './fixtures-fs.js';

t.test('mkswap area: the header page only', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('swap.img');
  await garbageFile(img, 16 * MiB);
  const uuid = '0c1f5b1e-3f0a-4a59-9d0c-2b0f7c1d2e3f';
  await sh('mkswap', ['-L', 'bmsnap-swap', '-U', uuid, img]);
  const usage = await probeImage(img);
  t.same(usage, {
    fs: 'swap',
    used: [{ offset: 0, length: 4096 }],
    blockSize: 4096,
    method: 'swap header',
    uuid,
    label: 'bmsnap-swap',
  });

  const src = await openSource(img);
  t.teardown(() => src.close());
  // A hibernation image replaces the signature: keep everything.
  const hibernated = await swapProbe.probe(patchedReader(src, [{ offset: 4096 - 10, bytes: Buffer.from('S1SUSPEND\0') }]));
  t.same(hibernated?.used, [{ offset: 0, length: 16 * MiB }], 'hibernation image: whole area');
  t.match(hibernated?.warnings?.[0], /hibernation/);

  const badVersion = await swapProbe.probe(patchedReader(src, [{ offset: 1024, bytes: u32le(7) }])).catch((e: unknown) => e);
  t.ok(badVersion instanceof FilesystemError && !badVersion.message.includes('\n'), 'unknown header version: one-line FilesystemError');
});

t.test('swap made on a 64 KiB-page machine', async (t) => {
  const data = Buffer.alloc(1 * MiB);
  data.write('SWAPSPACE2', 65536 - 10, 'latin1');
  data.writeUInt32LE(1, 1024);
  data.writeUInt32LE(15, 1028); // last page
  const usage = await probeFilesystem(bufferReader(data));
  t.equal(usage?.fs, 'swap');
  t.same(usage?.used, [{ offset: 0, length: 65536 }]);
  t.equal(usage?.blockSize, 65536);
  t.notOk(usage?.uuid, 'no uuid when the field is zero');
});

t.test('unrecognised partitions: null from every probe', async (t) => {
  t.equal(await probeFilesystem(bufferReader(new Uint8Array(4 * MiB))), null, 'all zeros');
  t.equal(await probeFilesystem(bufferReader(randomBytes(4 * MiB))), null, 'random bytes');
  t.equal(await probeFilesystem(bufferReader(new Uint8Array(100))), null, 'tiny partition');
  t.same(probes.map((p) => p.name), ['xfs', 'ext', 'swap', 'vfat'], 'probe order');
});
