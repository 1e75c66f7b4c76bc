// Partition table readers against tables written by the real tools (sgdisk, sfdisk).
import t from 'tap';
import { mkdtempSync, rmSync, openSync, writeSync, readSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { openSource } from '../../agent/src/source/open-source.js';
import { readPartitionTable } from '../../agent/src/map/partition-table.js';
import { PartitionTableError } from '../../agent/src/errors.js';

const MiB = 2 ** 20;

async function disk(t: { teardown(fn: () => void): void }, sizeMiB: number): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'bmsnap-pt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'disk.raw');
  await execa('truncate', ['-s', `${sizeMiB}M`, path]);
  return path;
}

async function tableOf(path: string) {
  const src = await openSource(path);
  try { return await readPartitionTable(src, src.sectorSize); } finally { await src.close(); }
}

function patch(path: string, offset: number, bytes: Buffer) {
  const fd = openSync(path, 'r+');
  writeSync(fd, bytes, 0, bytes.length, offset);
  closeSync(fd);
}
function peek(path: string, offset: number, n: number): Buffer {
  const fd = openSync(path, 'r');
  const b = Buffer.alloc(n);
  readSync(fd, b, 0, n, offset);
  closeSync(fd);
  return b;
}

t.test('GPT written by sgdisk', async (t) => {
  const path = await disk(t, 64);
  await execa('sgdisk', ['-n1:2048:+1M', '-t1:ef02', '-n2:0:+20M', '-t2:ef00', '-c2:esp', '-n3:0:0', '-t3:8300', '-c3:root', path]);
  const p = await tableOf(path);
  t.equal(p.kind, 'table');
  if (p.kind !== 'table') return;
  t.equal(p.table.type, 'gpt');
  t.same(p.table.partitions.map((x) => [x.index, x.start, x.typeName, x.name ?? null, !!x.copyWhole]), [
    [1, 2048 * 512, 'BIOS boot', null, true],
    [2, 4096 * 512, 'EFI System', 'esp', false],
    [3, (4096 + 40960) * 512, 'Linux filesystem', 'root', false],
  ]);
  const last = p.table.partitions[2]!;
  t.ok(last.start + last.size <= 64 * MiB - 33 * 512, 'last partition ends before the backup GPT');
  t.same(p.table.warnings, []);
});

t.test('GPT with a damaged primary header falls back to the backup, with a warning', async (t) => {
  const path = await disk(t, 32);
  await execa('sgdisk', ['-n1:2048:0', '-t1:8300', path]);
  const hdr = peek(path, 512, 92);
  hdr[30]! ^= 0xff; // inside "my LBA": the header CRC no longer matches
  patch(path, 512, hdr);
  const p = await tableOf(path);
  t.equal(p.kind, 'table');
  if (p.kind !== 'table') return;
  t.equal(p.table.partitions.length, 1);
  t.match(p.table.warnings.join('\n'), /primary GPT unusable \(header CRC mismatch\)/);
});

t.test('GPT with both headers damaged is an error', async (t) => {
  const path = await disk(t, 32);
  await execa('sgdisk', ['-n1:2048:0', '-t1:8300', path]);
  for (const off of [512, 32 * MiB - 512]) {
    const hdr = peek(path, off, 92);
    hdr[40]! ^= 0x01;
    patch(path, off, hdr);
  }
  await t.rejects(tableOf(path), PartitionTableError);
  await t.rejects(tableOf(path), /corrupt GPT: primary header \(header CRC mismatch\) and backup header \(header CRC mismatch\)/);
});

t.test('GPT whose entry array was altered is caught by the entry CRC', async (t) => {
  const path = await disk(t, 32);
  await execa('sgdisk', ['-n1:2048:0', '-t1:8300', path]);
  // Move partition 1's end in both entry arrays without fixing the CRCs.
  for (const off of [1024 + 40, 32 * MiB - 33 * 512 + 40]) patch(path, off, Buffer.from([0x01, 0x02]));
  await t.rejects(tableOf(path), /entry array CRC mismatch/);
});

t.test('MBR with an extended partition and logical partitions (sfdisk)', async (t) => {
  const path = await disk(t, 64);
  await execa('sfdisk', ['--quiet', path], { input: 'label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=20480, type=82\nstart=43008, type=5\nstart=45056, size=10240, type=83\nstart=57344, type=c\n' });
  const p = await tableOf(path);
  t.equal(p.kind, 'table');
  if (p.kind !== 'table') return;
  t.equal(p.table.type, 'mbr');
  t.same(p.table.partitions.map((x) => [x.index, x.start / 512, x.size / 512, x.type]), [
    [1, 2048, 20480, '0x83'],
    [2, 22528, 20480, '0x82'],
    [5, 45056, 10240, '0x83'],
    [6, 57344, 131072 - 57344, '0x0c'],
  ]);
});

t.test('MBR whose extended chain loops is an error', async (t) => {
  const path = await disk(t, 64);
  await execa('sfdisk', ['--quiet', path], { input: 'label: dos\nstart=2048, type=5\nstart=4096, size=2048, type=83\nstart=8192, size=2048, type=83\n' });
  // Point the second EBR's "next" entry back at the first EBR (relative LBA 0 is invalid; use
  // the second EBR's own position relative to the extended start to make a self-loop).
  const ebr1 = peek(path, 2048 * 512, 512);
  const nextRel = ebr1.readUInt32LE(446 + 16 + 8);
  const ebr2Off = (2048 + nextRel) * 512;
  const ebr2 = peek(path, ebr2Off, 512);
  ebr2[446 + 16 + 4] = 0x05;
  ebr2.writeUInt32LE(nextRel, 446 + 16 + 8);
  ebr2.writeUInt32LE(2048, 446 + 16 + 12);
  patch(path, ebr2Off, ebr2);
  await t.rejects(tableOf(path), /extended partition chain loops/);
});

t.test('MBR entry pointing past the end of the disk', async (t) => {
  const path = await disk(t, 16);
  await execa('sfdisk', ['--quiet', path], { input: 'label: dos\nstart=2048, size=8192, type=83\n' });
  const mbr = peek(path, 0, 512);
  mbr.writeUInt32LE(10_000_000, 446 + 12);
  patch(path, 0, mbr);
  const p = await tableOf(path);
  t.equal(p.kind, 'implausible-mbr', 'left to the map builder, which fails unless a filesystem owns the sector');
});

t.test('no table at all', async (t) => {
  const path = await disk(t, 8);
  const p = await tableOf(path);
  t.equal(p.kind, 'none');
});
