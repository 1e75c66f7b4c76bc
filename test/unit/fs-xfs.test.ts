// XFS probe against real mkfs.xfs images: the zeroed copy (only the mapped bytes kept) must pass
// xfs_repair -n and hold the same files, and the free space must match xfs_db's.
import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FilesystemError } from '../../agent/src/errors.js';
import { crc32c } from '../../agent/src/map/crc32c.js';
import { totalLength } from '../../agent/src/map/extents.js';
import { xfsProbe } from '../../agent/src/map/filesystems/xfs.js';
import { readBytes, subReader, type ByteReader } from '../../agent/src/source/byte-reader.js';
import { openSource } from '../../agent/src/source/open-source.js';
import {
  assertWellFormed, garbageFile, MiB, patchedReader, probeImage, Scratch, sh, shStatus, treeDigest,
  u32be, u32le, writeRandomFiles, zeroedCopy,
} from './fixtures-fs.js';

type Patch = { offset: number; bytes: Uint8Array };

/**
 * PATCHES plus the CRC they make right again for the v5 structure at [offset, offset + length)
 * with its little-endian CRC-32C field at crcOff: corrupts a field behind the CRC's back, so
 * the check after it is the one that fires.
 */
async function resigned(src: ByteReader, at: { offset: number; length: number; crcOff: number }, patches: Patch[]): Promise<Patch[]> {
  const buf = await readBytes(patchedReader(src, patches), at.offset, at.length);
  buf.writeUInt32LE(0, at.crcOff);
  return [...patches, { offset: at.offset + at.crcOff, bytes: u32le(crc32c(buf)) }];
}

const SIZE = 300 * MiB; // mkfs.xfs refuses anything smaller
const KEEP = { 'a.bin': 3 * MiB + 123, 'dir/b.bin': 300_000, 'dir/sub/c.txt': 100, 'dir/sub/d.bin': 5000 };
const STALE = { 'stale1.bin': 8 * MiB, 'dir/stale2.bin': 5 * MiB };

async function xfsDb(img: string, cmds: string[]): Promise<string> {
  return sh('xfs_db', ['-r', ...cmds.flatMap((c) => ['-c', c]), img]);
}

interface Geometry {
  dblocks: number;
  blockSize: number;
  agCount: number;
  /** Sum of the AGFs' free counts: the free-space btree extents. */
  agfFree: number;
  /** Blocks on the AG free lists (AGFL): xfs_db freesp counts them as free, the probe keeps them. */
  agflBlocks: number;
  /** What `xfs_db freesp -s` reports. */
  freespTotal: number;
}

async function geometry(img: string): Promise<Geometry> {
  const out = await xfsDb(img, ['sb 0', 'print dblocks blocksize agcount', 'freesp -s']);
  const field = (re: RegExp, text = out): number => Number(re.exec(text)?.[1]);
  const g: Geometry = {
    dblocks: field(/^dblocks = (\d+)/m),
    blockSize: field(/^blocksize = (\d+)/m),
    agCount: field(/^agcount = (\d+)/m),
    agfFree: 0,
    agflBlocks: 0,
    freespTotal: field(/total free blocks (\d+)/),
  };
  for (let ag = 0; ag < g.agCount; ag++) {
    const agf = await xfsDb(img, [`agf ${ag}`, 'print freeblks flcount']);
    g.agfFree += field(/freeblks = (\d+)/, agf);
    g.agflBlocks += field(/flcount = (\d+)/, agf);
  }
  return g;
}

async function maxBnoLevel(img: string, agCount: number): Promise<number> {
  let max = 0;
  for (let ag = 0; ag < agCount; ag++) {
    max = Math.max(max, Number(/bnolevel = (\d+)/.exec(await xfsDb(img, [`agf ${ag}`, 'print bnolevel']))?.[1]));
  }
  return max;
}

/** Checks shared by every variant; returns nothing, asserts everything. */
async function checkImage(t: Test, s: Scratch, img: string, expectBlockSize: number, compare: (copy: string) => Promise<void>): Promise<void> {
  t.equal((await shStatus('xfs_repair', ['-n', img])).exitCode, 0, 'the original image is consistent');
  const usage = await probeImage(img);
  if (!usage) throw new Error('xfs probe did not recognise the image');
  t.equal(usage.fs, 'xfs');
  t.equal(usage.method, 'xfs free-space btrees');
  t.equal(usage.blockSize, expectBlockSize);
  t.notOk(usage.warnings, 'no warnings');
  t.equal(usage.uuid, (await sh('blkid', ['-o', 'value', '-s', 'UUID', img])).trim(), 'uuid as blkid reports it');
  t.equal(usage.label, 'bmsnap-t', 'label');
  assertWellFormed(t, usage, SIZE);

  const g = await geometry(img);
  t.equal(g.freespTotal, g.agfFree + g.agflBlocks, 'xfs_db freesp = AGF free counts + AGFL blocks');
  t.equal(totalLength(usage.used), (g.dblocks - g.agfFree) * g.blockSize, 'used = dblocks - AGF free blocks');
  t.ok(totalLength(usage.used) < 0.3 * SIZE, `map is small (${totalLength(usage.used)} of ${SIZE})`);

  const copy = s.path('zeroed.img');
  await zeroedCopy(img, copy, usage.used);
  const repair = await shStatus('xfs_repair', ['-n', copy]);
  t.equal(repair.exitCode, 0, 'xfs_repair -n finds nothing wrong in the zeroed copy');
  if (repair.exitCode !== 0) t.comment(repair.output);
  await compare(copy);
}

t.test('xfs v5, fragmented free space, 1 KiB blocks', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('fs.img');
  await garbageFile(img, SIZE);
  await sh('mkfs.xfs', ['-q', '-f', '-K', '-L', 'bmsnap-t', '-b', 'size=1024', '-d', 'agcount=2', img]);
  await s.withMount(img, 'rw', async (dir) => {
    await writeRandomFiles(dir, { ...KEEP, ...STALE });
    // Many small files, every other one deleted: hundreds of free extents, a multi-level bnobt.
    const small = join(dir, 'small');
    await mkdir(small);
    for (let i = 0; i < 800; i++) await writeFile(join(small, `f${i}`), randomBytes(1500));
    await sh('sync', ['-f', dir]);
    for (let i = 0; i < 800; i += 2) await rm(join(small, `f${i}`));
    await sh('rm', Object.keys(STALE).map((n) => join(dir, n)));
  });
  const agCount = (await geometry(img)).agCount;
  t.ok((await maxBnoLevel(img, agCount)) >= 2, 'some free-space btree has node blocks');
  await checkImage(t, s, img, 1024, async (copy) => {
    const before = await s.withMount(img, 'ro,norecovery', (dir) => treeDigest(dir));
    const after = await s.withMount(copy, 'ro,norecovery,nouuid', (dir) => treeDigest(dir));
    t.ok(Object.keys(before).length > 400, 'files are there');
    t.notOk(Object.keys(before).some((n) => n.includes('stale')), 'deleted files are gone');
    t.same(after, before, 'the zeroed copy holds the same files');
  });
});

t.test('xfs v5, 4 KiB blocks, default geometry', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('fs.img');
  await garbageFile(img, SIZE);
  await sh('mkfs.xfs', ['-q', '-f', '-K', '-L', 'bmsnap-t', img]);
  await s.withMount(img, 'rw', async (dir) => {
    await writeRandomFiles(dir, { ...KEEP, ...STALE });
    await sh('ln', ['-s', 'dir/b.bin', join(dir, 'link')]);
    await sh('sync', ['-f', dir]);
    await sh('rm', Object.keys(STALE).map((n) => join(dir, n)));
    // Mounted, the log has no unmount record: the btrees may lag behind, keep everything.
    const live = await probeImage(img);
    t.equal(live?.method, 'xfs whole filesystem (log not clean)', 'while mounted: whole filesystem');
    t.same(live?.used, [{ offset: 0, length: SIZE }]);
    t.match(live?.warnings?.[0], /unmount record|log/, 'while mounted: warning');
  });
  await checkImage(t, s, img, 4096, async (copy) => {
    const before = await s.withMount(img, 'ro,norecovery', (dir) => treeDigest(dir));
    const after = await s.withMount(copy, 'ro,norecovery,nouuid', (dir) => treeDigest(dir));
    t.same(after, before, 'the zeroed copy holds the same files');
  });
});

t.test('xfs v4 (crc=0), 4 KiB sectors, populated from a protofile', async (t) => {
  // The host kernel no longer mounts v4: fill it with mkfs.xfs -p and read files back through
  // their block maps (xfs_db bmap) from the zeroed copy.
  const s = await Scratch.create(t);
  const src = s.path('src');
  await writeRandomFiles(src, { ...KEEP, 'big.bin': 6 * MiB });
  const files = [...Object.keys(KEEP), 'big.bin'];
  const dirs = new Set(files.filter((f) => f.includes('/')).map((f) => f.slice(0, f.lastIndexOf('/'))));
  const proto = ['bmsnap', '0 0', 'd--755 0 0', ...protoTree(src, '', files, dirs), '$', ''].join('\n');
  await writeFile(s.path('proto'), proto);
  const img = s.path('fs.img');
  await garbageFile(img, SIZE);
  await sh('mkfs.xfs', ['-q', '-f', '-K', '-L', 'bmsnap-t', '-m', 'crc=0', '-s', 'size=4096', '-p', s.path('proto'), img]);
  await checkImage(t, s, img, 4096, async (copy) => {
    const g = await geometry(copy);
    const agBlocks = Number(/agblocks = (\d+)/.exec(await xfsDb(copy, ['sb 0', 'print agblocks']))?.[1]);
    for (const f of files) {
      const data = await readThroughBmap(copy, f, agBlocks, g.blockSize);
      const want = await readFile(join(src, f));
      t.equal(sha(data), sha(want), `${f} reads back from the zeroed copy`);
    }
  });
});

/** Protofile lines for FILES (paths relative to SRC) under directory PREFIX. */
function protoTree(src: string, prefix: string, files: string[], dirs: Set<string>): string[] {
  const lines: string[] = [];
  const here = (p: string): boolean => (prefix ? p.startsWith(`${prefix}/`) : true) && !p.slice(prefix ? prefix.length + 1 : 0).includes('/');
  for (const f of files.filter(here)) lines.push(`${f.slice(f.lastIndexOf('/') + 1)} ---644 0 0 ${join(src, f)}`);
  for (const d of [...dirs].filter(here)) {
    lines.push(`${d.slice(d.lastIndexOf('/') + 1)} d--755 0 0`, ...protoTree(src, d, files, dirs), '$');
  }
  return lines;
}

async function readThroughBmap(img: string, path: string, agBlocks: number, bs: number): Promise<Buffer> {
  const out = await xfsDb(img, [`path /${path}`, 'bmap', 'print core.size']);
  const size = Number(/core\.size = (\d+)/.exec(out)?.[1]);
  const data = Buffer.alloc(Math.ceil(size / bs) * bs);
  const fh = await open(img, 'r');
  try {
    for (const m of out.matchAll(/data offset (\d+) startblock \d+ \((\d+)\/(\d+)\) count (\d+)/g)) {
      const [fileBlock, ag, agbno, count] = [m[1], m[2], m[3], m[4]].map(Number) as [number, number, number, number];
      await fh.read(data, fileBlock * bs, count * bs, (ag * agBlocks + agbno) * bs);
    }
  } finally {
    await fh.close();
  }
  return data.subarray(0, size);
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

t.test('xfs shut down with committed changes left in its log (a crash): whole filesystem', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('crashed.img');
  await sh('truncate', ['-s', String(SIZE), img]);
  await sh('mkfs.xfs', ['-q', '-f', '-K', img]);
  await s.withMount(img, 'rw', async (dir) => {
    await writeRandomFiles(dir, { 'a.bin': MiB });
    // -f: flush the log first, so it holds committed changes the btrees on disk do not have yet
    await sh('xfs_io', ['-x', '-c', 'shutdown -f', dir]);
  });
  t.not((await shStatus('xfs_repair', ['-n', img])).exitCode, 0, 'xfs_repair -n sees a log to replay');
  const usage = await probeImage(img);
  t.same(usage?.used, [{ offset: 0, length: SIZE }], 'whole filesystem kept');
  t.match(usage?.warnings?.[0], /mapping the whole filesystem/);
});

t.test('xfs corruption and edge cases', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('small.img');
  await sh('truncate', ['-s', String(SIZE), img]);
  await sh('mkfs.xfs', ['-q', '-f', '-K', '-L', 'bmsnap-t', img]);
  const src = await openSource(img);
  t.teardown(() => src.close());
  const bs = 4096;
  const agBlocks = Number(/agblocks = (\d+)/.exec(await xfsDb(img, ['sb 0', 'print agblocks']))?.[1]);
  const bnoRoot = Number(/bnoroot = (\d+)/.exec(await xfsDb(img, ['agf 0', 'print bnoroot']))?.[1]);

  const expectError = async (name: string, reader: Parameters<typeof xfsProbe.probe>[0], pattern: RegExp): Promise<void> => {
    const err = await xfsProbe.probe(reader).then(() => null, (e: unknown) => e);
    t.ok(err instanceof FilesystemError, `${name}: FilesystemError`);
    t.ok(err instanceof Error && !err.message.includes('\n'), `${name}: one-line message`);
    t.match((err as Error | null)?.message, pattern, `${name}: message`);
  };
  // v5: superblock (CRC over the 512-byte sector, field at 224), AGF (216), btree blocks (52).
  const SB = { offset: 0, length: 512, crcOff: 224 };
  const agf = (ag: number): { offset: number; length: number; crcOff: number } => ({ offset: ag * agBlocks * bs + 512, length: 512, crcOff: 216 });
  const block = (ag: number, agbno: number): { offset: number; length: number; crcOff: number } => ({ offset: (ag * agBlocks + agbno) * bs, length: bs, crcOff: 52 });
  const cntRoot = Number(/cntroot = (\d+)/.exec(await xfsDb(img, ['agf 0', 'print cntroot']))?.[1]);

  // Checks that came before the CRCs: the CRC is made right again so the field check fires.
  await expectError('absurd block size', patchedReader(src, await resigned(src, SB, [{ offset: 4, bytes: u32be(3000) }])), /block size/);
  await expectError('filesystem larger than the partition', subReader(src, 0, SIZE - MiB), /partition holds/);
  await expectError('bad AGF magic', patchedReader(src, [{ offset: agBlocks * bs + 512, bytes: u32be(0x12345678) }]), /AG 1: bad AGF magic/);
  await expectError('bad btree magic', patchedReader(src, [{ offset: bnoRoot * bs, bytes: u32be(0x41425443) }]), /bad magic/);
  await expectError('btree root outside the AG', patchedReader(src, await resigned(src, agf(0), [{ offset: 512 + 16, bytes: u32be(agBlocks + 5) }])), /outside the AG/);

  // v5 CRCs: one flipped byte anywhere in the sector or block.
  const flip = async (offset: number): Promise<Patch[]> => [{ offset, bytes: Uint8Array.of((await readBytes(src, offset, 1))[0]! ^ 0x10) }];
  await expectError('superblock byte', patchedReader(src, await flip(150)), /^xfs superblock CRC mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)$/);
  await expectError('superblock CRC field', patchedReader(src, await flip(224)), /^xfs superblock CRC mismatch/);
  await expectError('AGF byte', patchedReader(src, await flip(2 * agBlocks * bs + 512 + 300)), /^xfs AG 2: AGF CRC mismatch/);
  await expectError('bnobt block byte', patchedReader(src, await flip(bnoRoot * bs + bs - 1)), new RegExp(`^xfs AG 0 bnobt free-space btree: block ${bnoRoot} CRC mismatch`));
  await expectError('cntbt block byte', patchedReader(src, await flip(cntRoot * bs + 60)), new RegExp(`^xfs AG 0 cntbt free-space btree: block ${cntRoot} CRC mismatch`));
  // v5 headers behind a valid CRC: owner, own address, uuid.
  await expectError('btree block of another AG', patchedReader(src, await resigned(src, block(0, bnoRoot), [{ offset: bnoRoot * bs + 48, bytes: u32be(3) }])), /block \d+ says it belongs to AG 3/);
  await expectError('btree block at another address', patchedReader(src, await resigned(src, block(0, bnoRoot), [{ offset: bnoRoot * bs + 20, bytes: u32be(999) }])), /says it is at sector 999, not/);
  await expectError('btree block of another filesystem', patchedReader(src, await resigned(src, block(0, cntRoot), [{ offset: cntRoot * bs + 40, bytes: u32be(0xdeadbeef) }])), /belongs to another filesystem/);
  await expectError('AGF of another filesystem', patchedReader(src, await resigned(src, agf(1), [{ offset: agBlocks * bs + 512 + 64, bytes: u32be(1) }])), /AG 1: AGF belongs to another filesystem/);
  // AGF fields behind a valid CRC.
  await expectError('wrong agf_longest', patchedReader(src, await resigned(src, agf(0), [{ offset: 512 + 56, bytes: u32be(5) }])), /AG 0: AGF says the longest free extent is 5 blocks/);
  await expectError('free list count', patchedReader(src, await resigned(src, agf(0), [{ offset: 512 + 48, bytes: u32be(2) }])), /AG 0: AGF free list count 2 does not match/);
  await expectError('free list slot', patchedReader(src, await resigned(src, agf(0), [{ offset: 512 + 44, bytes: u32be(5000) }])), /AG 0: AGF free list slots/);
  await expectError('cntbt root = bnobt root', patchedReader(src, await resigned(src, agf(0), [{ offset: 512 + 20, bytes: u32be(bnoRoot) }])), /cntbt free-space btree: root \d+ is already part of a free-space btree/);

  // An AGF whose free count disagrees with its btrees: that AG is kept whole, with a warning.
  const skewed = await xfsProbe.probe(patchedReader(src, await resigned(src, agf(0), [{ offset: 512 + 52, bytes: u32be(19000) }])));
  t.match(skewed?.warnings?.[0], /AG 0: .*mapping the whole AG/);
  t.ok(skewed?.used[0]?.offset === 0 && (skewed?.used[0]?.length ?? 0) >= agBlocks * bs, 'AG 0 mapped whole');

  t.equal(await xfsProbe.probe(patchedReader(src, [{ offset: 0, bytes: u32be(0) }])), null, 'no magic: null');
});

t.test('xfs v5 CRC and uuid conventions: 4 KiB sectors, a changed uuid (sb_meta_uuid)', async (t) => {
  const s = await Scratch.create(t);
  // 4 KiB sectors: the superblock and AGF CRCs cover the whole sector, not 512 bytes.
  const big = s.path('sect4k.img');
  await sh('truncate', ['-s', String(SIZE), big]);
  await sh('mkfs.xfs', ['-q', '-f', '-K', '-s', 'size=4096', big]);
  const g = await geometry(big);
  const bigUsage = await probeImage(big);
  t.equal(bigUsage?.method, 'xfs free-space btrees', '4 KiB sectors: mapped from the btrees');
  t.equal(totalLength(bigUsage?.used ?? []), (g.dblocks - g.agfFree) * g.blockSize, '4 KiB sectors: used = dblocks - AGF free blocks');

  // xfs_admin -U sets a new sb_uuid but leaves the metadata stamped with the old one, which the
  // superblock keeps in sb_meta_uuid (incompat feature META_UUID).
  const img = s.path('newuuid.img');
  await sh('truncate', ['-s', String(SIZE), img]);
  await sh('mkfs.xfs', ['-q', '-f', '-K', img]);
  await sh('xfs_admin', ['-U', 'generate', img]);
  // xfs_admin rewrites the log in a shape the log check does not accept as clean (whole
  // filesystem, safe); a mount and unmount leaves an ordinary unmount record.
  await s.withMount(img, 'rw', async () => {});
  const ids = await xfsDb(img, ['sb 0', 'print uuid meta_uuid']);
  const uuid = /^uuid = (\S+)/m.exec(ids)?.[1];
  t.not(uuid, /^meta_uuid = (\S+)/m.exec(ids)?.[1], 'uuid and meta_uuid differ');
  const usage = await probeImage(img);
  t.equal(usage?.method, 'xfs free-space btrees', 'new uuid: mapped from the btrees');
  t.equal(usage?.uuid, uuid, 'reports the new uuid');
});

t.test('xfs v4: a damaged free-space record is caught by the other btree', async (t) => {
  // No CRCs on v4: the bnobt and the cntbt are compared instead.
  const s = await Scratch.create(t);
  const img = s.path('v4.img');
  await sh('truncate', ['-s', String(SIZE), img]);
  await sh('mkfs.xfs', ['-q', '-f', '-K', '-m', 'crc=0', img]);
  const src = await openSource(img);
  t.teardown(() => src.close());
  t.equal((await xfsProbe.probe(src))?.method, 'xfs free-space btrees', 'pristine v4 maps');
  const agBlocks = Number(/agblocks = (\d+)/.exec(await xfsDb(img, ['sb 0', 'print agblocks']))?.[1]);
  const bs = 4096;
  const agf = await xfsDb(img, ['agf 1', 'print bnoroot cntroot']);
  const bnoRoot = Number(/bnoroot = (\d+)/.exec(agf)?.[1]);
  const cntRoot = Number(/cntroot = (\d+)/.exec(agf)?.[1]);
  const leaf = async (root: number): Promise<Buffer> => readBytes(src, (agBlocks + root) * bs, bs);
  const bno = await leaf(bnoRoot);
  t.equal(bno.readUInt32BE(0), 0x41425442, 'AG 1 bnobt root is an ABTB leaf');
  t.ok(bno.readUInt16BE(6) >= 1, 'with a record');
  // First record (startblock, blockcount) moved up by one block, one block shorter: still sorted,
  // inside the AG, not overlapping anything. Only the cntbt can tell.
  const [start, count] = [bno.readUInt32BE(16), bno.readUInt32BE(20)];
  const moved = [{ offset: (agBlocks + bnoRoot) * bs + 16, bytes: Buffer.concat([u32be(start + 1), u32be(count - 1)]) }];
  const err = await xfsProbe.probe(patchedReader(src, moved)).then(() => null, (e: unknown) => e);
  t.ok(err instanceof FilesystemError, 'bnobt record: FilesystemError');
  t.match((err as Error | null)?.message, new RegExp(`^xfs AG 1: the free-space btrees disagree: bnobt has ${start + 1}\\+${count - 1} where cntbt has ${start}\\+${count}$`));

  const cnt = await leaf(cntRoot);
  t.equal(cnt.readUInt32BE(0), 0x41425443, 'AG 1 cntbt root is an ABTC leaf');
  const shrunk = [{ offset: (agBlocks + cntRoot) * bs + 20, bytes: u32be(cnt.readUInt32BE(20) - 1) }];
  const err2 = await xfsProbe.probe(patchedReader(src, shrunk)).then(() => null, (e: unknown) => e);
  t.ok(err2 instanceof FilesystemError, 'cntbt record: FilesystemError');
  t.match((err2 as Error | null)?.message, /^xfs AG 1: (the free-space btrees disagree|AGF says the longest)/);
});
