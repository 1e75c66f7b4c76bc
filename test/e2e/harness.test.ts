// Self-test of the e2e harness, independent of bmsnap: the disk builders produce what they claim,
// every verifier passes on a faithful copy (`qemu-img convert` stands in for the tool) and on an
// ideal used-blocks-only copy (e2image -ra), and every verifier FAILS on deliberately broken
// copies. A verifier that cannot fail proves nothing.
import t from 'tap';
import { execa } from 'execa';
import { copyFile, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ALL_LAYOUTS, TOOL_ENV, buildDisk, detectFs, findPartition, makeTempDir, readPartitionTable, run,
  attachLoop, removeTempDir, writeAt, type LayoutName, type TestDisk,
} from '../lib/disks.js';
import {
  compareBlocks, comparePartitionTables, convertToRaw, countStaleSectors, digestAll, findBytes, flipBytes, fsckAll,
  physicalOffsetOf, qemuImgCheck, sha256File, treeDigest, verbatimRegions, type TreeDigest,
} from '../lib/verify.js';

interface StandIn {
  disk: TestDisk;
  qcow2: string;
  /** qemu-img's qcow2 converted back to raw: a faithful copy of the source. */
  back: string;
  srcDigests: Map<number, TreeDigest>;
}

const work = await makeTempDir('bmsnap-harness-');
const standIns = new Map<LayoutName, StandIn>();
t.teardown(async () => {
  for (const s of standIns.values()) await s.disk.cleanup();
  await removeTempDir(work);
});

function fsPartitions(disk: TestDisk): number[] {
  return disk.partitions.filter((p) => p.fs !== null && p.fs !== 'swap').map((p) => p.index);
}

/** A sparse copy to break on purpose. */
async function scratchCopy(src: string, name: string): Promise<string> {
  const dst = join(work, name);
  await run('cp', ['--sparse=always', src, dst]);
  return dst;
}

for (const layout of ALL_LAYOUTS) {
  t.test(`${layout}: builder and stand-in copy pass every verifier`, async (t) => {
    const disk = await buildDisk(layout, work);
    const qcow2 = join(work, `${layout}.qcow2`);
    const back = join(work, `${layout}.back.raw`);
    const srcSha = await sha256File(disk.path);

    t.test('the built disk has the expected partitions and filesystems', async (t) => {
      const table = await readPartitionTable(disk.path);
      t.equal(table.label, disk.table, 'partition table type');
      for (const e of disk.partitions) {
        const p = table.partitions.find((x) => x.index === e.index);
        if (!p) {
          t.fail(`partition ${e.index} missing`);
          continue;
        }
        if (e.container) continue;
        t.equal(await detectFs(disk.path, p.start, p.size), e.fs, `partition ${e.index} (${e.role}) holds ${e.fs ?? 'no filesystem'}`);
      }
      t.equal(table.partitions.length, disk.partitions.length, 'no unexpected partitions');
      t.ok(disk.staleBytes > 0, 'stale data was written');
    });

    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', disk.path, qcow2]);
    const check = await qemuImgCheck(qcow2);
    t.ok(check.clean, 'qemu-img check is clean', { report: check.report });
    await convertToRaw(qcow2, back);
    t.same(await comparePartitionTables(disk.path, back), [], 'partition tables and verbatim regions identical');
    const blocks = await compareBlocks(disk.path, back);
    t.equal(blocks.mismatchedBytes, 0, 'every sector identical or zeroed');
    t.equal(blocks.zeroedBytes, 0, 'a faithful copy zeroes nothing (no false "dropped" bytes)');
    t.ok(blocks.srcNonZeroBytes > 0.9 * disk.staleBytes, 'the source carries its stale bytes');
    const srcStale = await countStaleSectors(disk.path);
    t.ok(srcStale > 0.5 * (disk.staleBytes / 512), `most stale sectors survive deletion in the source (${srcStale})`);
    t.equal(await countStaleSectors(back), srcStale, 'a naive copy keeps every stale sector (the e2e check would reject it)');
    const fsck = await fsckAll(back);
    for (const r of fsck) t.ok(r.ok, `fsck partition ${r.index} (${r.fs})`, { output: r.output });
    t.same(fsck.filter((r) => r.tool !== 'none').map((r) => r.index), fsPartitions(disk), 'every filesystem was checked');
    const srcDigests = await digestAll(disk.path);
    const backDigests = await digestAll(back);
    t.same([...srcDigests.keys()], fsPartitions(disk), 'a digest for every filesystem');
    for (const [i, d] of srcDigests) {
      t.ok(d.entries.length > 50, `partition ${i}: the tree is non-trivial (${d.entries.length} entries)`);
      t.same(backDigests.get(i)?.entries, d.entries, `partition ${i} (${d.fs}): tree identical`);
    }
    t.equal(await sha256File(disk.path), srcSha, 'verifying left the source untouched');
    standIns.set(layout, { disk, qcow2, back, srcDigests });
  });
}

t.test('builders put markers where the contract needs verbatim copies', async (t) => {
  const gpt = standIns.get('gpt')!.disk.path;
  const regions = await verbatimRegions(gpt);
  t.same(regions.map((r) => r.name), [
    'partition table + gap before the first partition', 'backup GPT entries + header', 'partition 1 (BIOS boot)',
  ]);
  t.ok((await findBytes(gpt, 34 * 512, 512, Buffer.from('GAP-000034|'))) === 34 * 512, 'gap marker at LBA 34');
  t.ok((await findBytes(gpt, 0, 440, Buffer.from('BOOTCODE-'))) === 0, 'boot code marker in LBA 0');
  t.ok((await findBytes(gpt, 2048 * 512, 512, Buffer.from('BIOSBOOT-000000|'))) === 2048 * 512, 'BIOS boot marker');
  const mbr = standIns.get('mbr')!.disk.path;
  t.ok((await findBytes(mbr, 512, 512, Buffer.from('GAP-000001|'))) === 512, 'MBR gap marker at LBA 1');
  t.same((await verbatimRegions(mbr)).map((r) => r.name.replace(/ at byte \d+/, '')), [
    'partition table + gap before the first partition', 'EBR #0', 'EBR #1',
  ]);
  t.same((await verbatimRegions(standIns.get('raw-ext4')!.disk.path)), [], 'no table, no verbatim regions');
  t.ok((await verbatimRegions(standIns.get('unknown-fs')!.disk.path)).some((r) => r.name === 'partition 2 (no filesystem)'));
});

t.test('an ideal used-blocks-only copy (e2image -ra) passes and drops the stale data', async (t) => {
  const { disk, srcDigests } = standIns.get('raw-ext4')!;
  const ideal = join(work, 'ideal.raw');
  await run('e2image', ['-ra', disk.path, ideal]);
  const blocks = await compareBlocks(disk.path, ideal);
  t.equal(blocks.mismatchedBytes, 0, 'sectors identical or zeroed');
  t.ok(blocks.zeroedBytes >= 0.8 * disk.staleBytes, `stale bytes zeroed: ${blocks.zeroedBytes} of ${disk.staleBytes}`);
  t.equal(await countStaleSectors(ideal), 0, 'no stale sector survives an ideal copy');
  t.ok((await fsckAll(ideal)).every((r) => r.ok), 'fsck clean');
  t.same((await treeDigest(ideal, 0)).entries, srcDigests.get(0)!.entries, 'tree identical');
  await rm(ideal);
});

t.test('verifiers fail on broken copies', async (t) => {
  const gpt = standIns.get('gpt')!;

  t.test('qemu-img check: zeroed refcounts', async (t) => {
    const bad = join(work, 'bad.qcow2');
    await copyFile(gpt.qcow2, bad);
    // header: refcount_table_offset at byte 48 (big endian); zero refcounts of clusters 10..12
    const header = (await execa('head', ['-c', '64', bad], { encoding: 'buffer' })).stdout;
    const table = Number(Buffer.from(header).readBigUInt64BE(48));
    const block = Number(Buffer.from((await execa('dd', [`if=${bad}`, 'bs=1', `skip=${table}`, 'count=8', 'status=none'], { encoding: 'buffer' })).stdout).readBigUInt64BE(0));
    for (const c of [10, 11, 12]) await writeAt(bad, block + 2 * c, Buffer.alloc(2));
    const check = await qemuImgCheck(bad);
    t.notOk(check.clean, 'not clean');
    t.ok(Number(check.report?.corruptions) > 0, 'corruptions reported');
    await rm(bad);
  });

  t.test('tree digest: one byte of file content, per filesystem', async (t) => {
    const bad = await scratchCopy(gpt.back, 'content.raw');
    t.teardown(() => rm(bad, { force: true }));
    for (const [index, file] of [[3, 'data/random-3M-odd.bin'], [4, 'var/log/syslog']] as const) {
      const off = await physicalOffsetOf(bad, index, file);
      const restore = await flipBytes(bad, off + 100);
      const d = await treeDigest(bad, index);
      t.not(d.digest, gpt.srcDigests.get(index)!.digest, `partition ${index}: ${file} content change detected`);
      t.ok((await fsckAll(bad)).every((r) => r.ok), 'fsck (rightly) does not see a data change');
      const blocks = await compareBlocks(gpt.disk.path, bad);
      t.ok(blocks.mismatchedBytes > 0, 'block comparison sees a sector that is neither copied nor zero');
      await restore();
    }
    // vfat: locate BOOTX64.EFI's first sector by its content
    const esp = await findPartition(bad, 2);
    const head = Buffer.from((await execa('mtype', ['-i', `${bad}@@${esp.start}`, '::/EFI/BOOT/BOOTX64.EFI'], { env: TOOL_ENV, encoding: 'buffer' })).stdout).subarray(0, 512);
    const off = await findBytes(bad, esp.start, esp.size, head);
    t.ok(off > esp.start, 'found BOOTX64.EFI in the ESP');
    const restore = await flipBytes(bad, off + 7);
    t.not((await treeDigest(bad, 2)).digest, gpt.srcDigests.get(2)!.digest, 'vfat content change detected');
    await restore();
    t.equal((await treeDigest(bad, 2)).digest, gpt.srcDigests.get(2)!.digest, 'and restoring it makes the digests equal again');
  });

  t.test('tree digest: metadata only (mode, mtime, xattr) on ext4', async (t) => {
    const raw = standIns.get('raw-ext4')!;
    const bad = await scratchCopy(raw.back, 'meta.raw');
    t.teardown(() => rm(bad, { force: true }));
    const loop = await attachLoop(bad);
    try {
      await run('debugfs', ['-w', '-R', 'set_inode_field /etc/shadow mode 0100600', loop.dev]);
      await run('debugfs', ['-w', '-R', 'set_inode_field /etc/passwd mtime 20200101000000', loop.dev]);
    } finally {
      await loop.detach();
    }
    const d = await treeDigest(bad, 0);
    const changed = d.entries.filter((l, i) => l !== raw.srcDigests.get(0)!.entries[i]).map((l) => l.split('\t')[0]);
    t.same(changed, ['etc/passwd', 'etc/shadow'], 'exactly the two changed inodes differ');
    t.ok((await fsckAll(bad)).every((r) => r.ok), 'the filesystem is still consistent');
  });

  t.test('partition tables: gap, backup GPT, BIOS boot, EBR, unknown partition', async (t) => {
    const cases: [string, number, string][] = [
      ['gpt', 1000 * 512 + 3, 'partition table + gap before the first partition'],
      ['gpt', gpt.disk.size - 512 - 16 * 512 + 40, 'backup GPT entries + header'],
      ['gpt', gpt.disk.size - 512 + 60, 'backup GPT entries + header'],
      ['gpt', 2048 * 512 + 5000, 'partition 1 (BIOS boot)'],
      ['gpt', 440, 'partition table + gap before the first partition'],
    ];
    const mbrBack = standIns.get('mbr')!.back;
    const ebr1 = (await verbatimRegions(mbrBack)).find((r) => r.name.startsWith('EBR #1'))!;
    cases.push(['mbr', ebr1.offset + 446 + 8, ebr1.name], ['mbr', 300 * 512, 'partition table + gap before the first partition']);
    const garbage = await findPartition(standIns.get('unknown-fs')!.disk.path, 2);
    cases.push(['unknown-fs', garbage.start + 70 * 1024 * 1024, 'partition 2 (no filesystem)']);
    for (const [layout, offset, region] of cases) {
      const s = standIns.get(layout as LayoutName)!;
      const restore = await flipBytes(s.back, offset);
      const diff = await comparePartitionTables(s.disk.path, s.back);
      t.same(diff.map((d) => [d.region, d.offset]), [[region, offset]], `${layout}: byte ${offset} -> ${region}`);
      await restore();
      t.same(await comparePartitionTables(s.disk.path, s.back), [], 'restored');
    }
    const short = await scratchCopy(gpt.back, 'short.raw');
    await run('truncate', ['-s', String(gpt.disk.size - 4096), short]);
    t.same((await comparePartitionTables(gpt.disk.path, short)).map((d) => d.region), ['disk size'], 'size difference');
    await rm(short);
  });

  t.test('block comparison: a used sector zeroed is "zeroed", not "mismatched" — the digest catches it', async (t) => {
    const s = standIns.get('raw-ext4')!;
    const off = await physicalOffsetOf(s.back, 0, 'usr/bin/tool');
    const fh = await open(s.back, 'r');
    const original = Buffer.alloc(512);
    await fh.read(original, 0, 512, off);
    await fh.close();
    await writeAt(s.back, off, Buffer.alloc(512));
    const blocks = await compareBlocks(s.disk.path, s.back);
    t.equal(blocks.zeroedBytes, 512);
    t.equal(blocks.mismatchedBytes, 0);
    t.not((await treeDigest(s.back, 0)).digest, s.srcDigests.get(0)!.digest, 'the tree digest sees the lost data');
    await writeAt(s.back, off, original);
    t.equal((await compareBlocks(s.disk.path, s.back)).zeroedBytes, 0, 'restored');
  });

  t.test('fsck: ext4 link count, xfs root nlink, vfat lost cluster', async (t) => {
    const bad = await scratchCopy(gpt.back, 'fsck.raw');
    t.teardown(() => rm(bad, { force: true }));
    const root = await findPartition(bad, 3);
    const data = await findPartition(bad, 4);
    const esp = await findPartition(bad, 2);
    await withWritableWindow(bad, root.start, root.size, (dev) =>
      run('debugfs', ['-w', '-R', 'set_inode_field /data/size-4095 links_count 5', dev]));
    await withWritableWindow(bad, data.start, data.size, async (dev) => {
      const rootIno = (await run('xfs_db', ['-r', '-c', 'sb 0', '-c', 'p rootino', dev])).split('=')[1]!.trim();
      await run('xfs_db', ['-x', '-c', `inode ${rootIno}`, '-c', 'write core.nlinkv2 77', dev]);
    });
    await markFreeFatClusterUsed(bad, esp.start, 60000);
    const results = await fsckAll(bad);
    t.same(results.filter((r) => !r.ok).map((r) => r.index), [2, 3, 4], 'the three damaged filesystems fail, the others pass');
  });
});

async function withWritableWindow<T>(file: string, offset: number, size: number, fn: (dev: string) => Promise<T>): Promise<T> {
  const loop = await attachLoop(file, { offset, sizeLimit: size });
  try {
    return await fn(loop.dev);
  } finally {
    await loop.detach();
  }
}

/** Sets FAT32 entry CLUSTER to end-of-chain in every FAT copy: a lost cluster. */
async function markFreeFatClusterUsed(raw: string, partStart: number, cluster: number): Promise<void> {
  const fh = await open(raw, 'r+');
  try {
    const bs = Buffer.alloc(512);
    await fh.read(bs, 0, 512, partStart);
    const reserved = bs.readUInt16LE(14);
    const fats = bs[16]!;
    const fatSectors = bs.readUInt32LE(36);
    const eoc = Buffer.alloc(4);
    eoc.writeUInt32LE(0x0ffffff8);
    for (let i = 0; i < fats; i++) await fh.write(eoc, 0, 4, partStart + (reserved + i * fatSectors) * 512 + 4 * cluster);
  } finally {
    await fh.close();
  }
}
