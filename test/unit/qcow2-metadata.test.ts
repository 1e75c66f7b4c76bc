// The qcow2 metadata generator on a layout too big to build for real in a test: a 6 TiB
// virtual disk whose ~2.6 GB of stored clusters need several refcount blocks and many L2
// tables. The data area is left sparse (qemu-img check reads metadata only), so this checks
// refcounts, L1/L2 and the header against qemu's own checker without writing gigabytes.
import t from 'tap';
import { mkdtempSync, openSync, writeSync, ftruncateSync, closeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { planLayout, fileSizeFor, storedClusters, type SizeTable } from '../../agent/src/encoder/qcow2/layout.js';
import { metadataClusters } from '../../agent/src/encoder/qcow2/metadata.js';
import { countMappedClusters } from '../../agent/src/encoder/cluster-plan.js';
import { STORED } from '../../agent/src/encoder/compress/protocol.js';
import { CLUSTER_SIZE } from '../../agent/src/encoder/qcow2/format.js';
import type { Extent } from '../../agent/src/map/extents.js';

const TiB = 2 ** 40;
const MiB = 2 ** 20;

function syntheticDisk(): { size: number; used: Extent[]; table: SizeTable } {
  const size = 6 * TiB;
  const used: Extent[] = [];
  // 41 runs of 1000 clusters, spread over the whole disk, plus small unaligned extents.
  for (let i = 0; i < 41; i++) used.push({ offset: i * 150 * 1024 * MiB + 4096, length: 1000 * CLUSTER_SIZE - 8192 });
  used.push({ offset: size - 512 * 34, length: 512 * 34 }); // a backup GPT at the very end
  const n = countMappedClusters(used, CLUSTER_SIZE);
  const codes = new Uint16Array(n);
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let i = 0; i < n; i++) {
    const r = rnd();
    codes[i] = r < 0.1 ? 0 : r < 0.4 ? STORED : 1 + Math.floor(rnd() * 65533);
  }
  return { size, used, table: { codes, storedSize: CLUSTER_SIZE + 10 } };
}

t.test('metadata for a 6 TiB disk with multiple refcount blocks passes qemu-img check', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bmsnap-meta-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { size, used, table } = syntheticDisk();
  const layout = planLayout(size, used, table.storedSize);
  let dataBytes = 0;
  for (const c of storedClusters(used, table, layout.dataOffset)) dataBytes += c.size;
  t.ok(layout.refBlockCount >= 2, `several refcount blocks (${layout.refBlockCount})`);
  t.ok(layout.l2Offsets.size >= 40, `many L2 tables (${layout.l2Offsets.size})`);
  const path = join(dir, 'meta.qcow2');
  const fd = openSync(path, 'w');
  let pos = 0;
  for (const cluster of metadataClusters(layout, used, table, 1, false)) pos += writeSync(fd, cluster, 0, cluster.length, pos);
  t.equal(pos, layout.dataOffset, 'metadata fills exactly the planned area');
  ftruncateSync(fd, fileSizeFor(layout, dataBytes));
  closeSync(fd);
  const res = await execa('qemu-img', ['check', '--output=json', path], { reject: false });
  const report = JSON.parse(res.stdout) as Record<string, number>;
  t.equal(report['corruptions'] ?? 0, 0, 'no corruptions');
  t.equal(report['leaks'] ?? 0, 0, 'no leaked clusters');
  t.equal(report['check-errors'] ?? 0, 0, 'no check errors');
  t.equal(report['allocated-clusters'], table.codes.filter((c) => c !== 0).length, 'every stored cluster is allocated');
  const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', path])).stdout) as { 'virtual-size': number };
  t.equal(info['virtual-size'], size);
});

t.test('a wrong refcount is caught (the check above can fail)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bmsnap-meta-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { size, used, table } = syntheticDisk();
  const layout = planLayout(size, used, table.storedSize);
  const path = join(dir, 'bad.qcow2');
  const fd = openSync(path, 'w');
  let pos = 0;
  for (const cluster of metadataClusters(layout, used, table, 1, false)) {
    if (pos === layout.refBlocksOffset) cluster.writeUInt16BE(7, 0); // header cluster refcount 1 -> 7
    pos += writeSync(fd, cluster, 0, cluster.length, pos);
  }
  let dataBytes = 0;
  for (const c of storedClusters(used, table, layout.dataOffset)) dataBytes += c.size;
  ftruncateSync(fd, fileSizeFor(layout, dataBytes));
  closeSync(fd);
  const res = await execa('qemu-img', ['check', '--output=json', path], { reject: false });
  t.not(res.exitCode, 0, 'qemu-img check reports the damage');
});
