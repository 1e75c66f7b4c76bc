// Seeded corruption fuzz of the partition table readers through buildDiskMap (issue 11): a GPT
// disk made by sgdisk and an MBR disk with an extended partition and logical partitions made by
// sfdisk, over garbage (so gaps and free blocks hold stale, non-zero data), each partition holding
// a small ext4 (mkfs.ext4 -d) or vfat (mkfs.vfat + mcopy) filesystem. Each case XORs a few bytes
// of one table structure (protective MBR, primary header, primary entries, backup header, backup
// entries; the MBR, each EBR); the disk map must then be refused in one line
// (PartitionTableError) or keep every byte the pristine map keeps. See corruption.ts.
import t, { type Test } from 'tap';
import { readFile } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { buildDiskMap } from '../../agent/src/map/build-map.js';
import { bufferReader, type ByteReader } from '../../agent/src/source/byte-reader.js';
import type { Extent } from '../../agent/src/map/extents.js';
import { fuzz, type FuzzReport, type Target } from './corruption.js';
import { PartitionTableError } from '../../agent/src/errors.js';
import { garbageFile, MiB, patchedReader, Scratch, sh, u32le, writeRandomFiles } from './fixtures-fs.js';

const CASES = 240;
const SS = 512;
const mapper = async (r: ByteReader) => (await buildDiskMap(r, SS)).used;

type Fs = 'ext4' | 'vfat';

/** Makes a filesystem of SIZE bytes with a few files (one deleted on vfat) and writes it into DISK at OFFSET. */
async function fill(s: Scratch, disk: string, offset: number, size: number, fs: Fs, tag: string): Promise<void> {
  const img = s.path(`${tag}.img`);
  const src = s.path(`${tag}-src`);
  await writeRandomFiles(src, { 'a.bin': 200_000, 'dir/b.bin': 70_000, 'dir/c.txt': 300, 'old.bin': 150_000 });
  await garbageFile(img, size);
  if (fs === 'ext4') {
    await sh('mkfs.ext4', ['-q', '-F', '-d', src, img]);
  } else {
    await sh('mkfs.vfat', ['-F', '16', '-s', '2', img]);
    await sh('mcopy', ['-s', '-i', img, `${src}/a.bin`, `${src}/old.bin`, `${src}/dir`, '::/']);
    await sh('mdel', ['-i', img, '::/old.bin']);
  }
  await sh('dd', [`if=${img}`, `of=${disk}`, 'bs=64K', `seek=${offset}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']);
}

/**
 * R with the CRCs of every GPT header that still has its signature rewritten (entry array first,
 * then the header), so damage reaches the field checks instead of stopping at a CRC.
 */
async function resealed(r: ByteReader): Promise<ByteReader> {
  const patches: { offset: number; bytes: Uint8Array }[] = [];
  for (const at of [SS, r.size - SS]) {
    const header = Buffer.alloc(SS);
    await r.readExact(header, at);
    if (header.toString('latin1', 0, 8) !== 'EFI PART') continue;
    const headerSize = header.readUInt32LE(12);
    if (headerSize < 92 || headerSize > SS) continue;
    const entries = Number(header.readBigUInt64LE(72)) * SS;
    const bytes = header.readUInt32LE(80) * header.readUInt32LE(84);
    if (entries + bytes <= r.size && bytes <= 16 * MiB) {
      const array = Buffer.alloc(bytes);
      await r.readExact(array, entries);
      header.writeUInt32LE(crc32(array), 88);
    }
    header.writeUInt32LE(0, 16);
    header.writeUInt32LE(crc32(header.subarray(0, headerSize)), 16);
    patches.push({ offset: at + 16, bytes: header.subarray(16, 20) }, { offset: at + 88, bytes: header.subarray(88, 92) });
  }
  return patchedReader(r, patches);
}

interface Run {
  name: string;
  base: Buffer;
  targets: Target[];
  seed: number;
  map?: (r: ByteReader) => Promise<readonly Extent[]>;
}

async function run(t: Test, reference: readonly Extent[], o: Run): Promise<FuzzReport> {
  const started = Date.now();
  const report = await fuzz({ base: bufferReader(o.base), reference, targets: o.targets, map: o.map ?? mapper, cases: CASES, seed: o.seed });
  t.comment(
    `${o.name}: ${report.cases} cases in ${Date.now() - started} ms: ${report.unchanged} unchanged, ${report.widened} widened, ` +
      `${report.narrowedSafely} narrowed safely, ${report.refused} refused`,
  );
  for (const m of report.sampleRefusals) t.comment(`  refused: ${m}`);
  t.ok(report.cases >= 200, `${o.name}: at least 200 cases`);
  t.same(report.failures, [], `${o.name}: no crash and no used non-zero byte left out`);
  return report;
}

async function pristineMap(t: Test, disk: Buffer, fsExpected: string[]): Promise<readonly Extent[]> {
  const pristine = await buildDiskMap(bufferReader(disk), SS);
  t.same(pristine.partitions.map((p) => p.fs), fsExpected, 'every pristine partition is mapped by its filesystem');
  t.same(pristine.warnings, [], 'no warnings on the pristine disk');
  return pristine.used;
}

t.test('GPT (sgdisk): damaged tables yield the pristine partitions or a refusal', async (t) => {
  const s = await Scratch.create(t);
  const disk = s.path('gpt.raw');
  const size = 64 * MiB;
  await garbageFile(disk, size);
  await sh('sgdisk', ['-o', '-n1:2048:+12M', '-t1:ef00', '-c1:esp', '-n2:0:+16M', '-t2:8300', '-n3:0:+20M', '-t3:8300', disk]);
  await fill(s, disk, 2048 * SS, 12 * MiB, 'vfat', 'p1');
  await fill(s, disk, (2048 + 12 * 2048) * SS, 16 * MiB, 'ext4', 'p2');
  await fill(s, disk, (2048 + 28 * 2048) * SS, 20 * MiB, 'ext4', 'p3');
  const last = size / SS - 1;
  const primary: Target[] = [
    { name: 'protective MBR', offset: 0, length: SS },
    { name: 'protective MBR entry', offset: 446, length: 16 },
    { name: 'primary header', offset: SS, length: 92 },
    { name: 'primary header sector', offset: SS, length: SS },
    { name: 'primary entries (in use)', offset: 2 * SS, length: 3 * 128 },
    { name: 'primary entries', offset: 2 * SS, length: 32 * SS },
  ];
  const backup: Target[] = [
    { name: 'backup header', offset: last * SS, length: 92 },
    { name: 'backup entries (in use)', offset: (last - 32) * SS, length: 3 * 128 },
    { name: 'backup entries', offset: (last - 32) * SS, length: 32 * SS },
  ];
  const bytes = await readFile(disk);
  const reference = await pristineMap(t, bytes, ['vfat', 'ext4', 'ext4']);

  // Hand-made damage the random cases are unlikely to hit.
  const base = bufferReader(bytes);
  const noEe = patchedReader(base, [{ offset: 446 + 4, bytes: Uint8Array.of(0x83) }]);
  const plain = await buildDiskMap(noEe, SS);
  t.equal(plain.table.type, 'gpt', 'protective MBR without its 0xEE byte: the GPT at LBA 1 still rules');
  t.same(plain.used, reference, 'and the map is the pristine one');
  const bothHeaders = (offset: number, value: Uint8Array) => [SS, size - SS].map((at) => ({ offset: at + offset, bytes: value }));
  const u64 = (n: number): Uint8Array => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    return b;
  };
  const refusedWith = async (name: string, r: ByteReader, pattern: RegExp): Promise<void> => {
    const err = await buildDiskMap(r, SS).then(() => null, (e: unknown) => e);
    t.ok(err instanceof PartitionTableError, `${name}: PartitionTableError`);
    t.match((err as Error | null)?.message, pattern, `${name}: message`);
  };
  await refusedWith('usable range over the primary entries (CRCs valid)', await resealed(patchedReader(base, bothHeaders(40, u64(2)))), /covers the primary entry array \(sectors 2-33\)/);
  await refusedWith('usable range over the backup header (CRCs valid)', await resealed(patchedReader(base, bothHeaders(48, u64(last)))), /usable range 34-\d+ does not fit|covers the/);
  await refusedWith('usable range starting at LBA 1 (CRCs valid)', await resealed(patchedReader(base, bothHeaders(40, u64(1)))), /usable range 1-/);

  // One damaged copy: the other one checks out, so the map is always the pristine one.
  const one = await run(t, reference, { name: 'GPT, one copy damaged', base: bytes, targets: [...primary, ...backup], seed: 0x6e7 });
  t.equal(one.unchanged, one.cases, 'one damaged copy: every case maps exactly the pristine disk (the other copy is used)');

  // The backup already unusable: damage to the primary that its CRCs catch leaves nothing to trust.
  const noBackup = Buffer.from(bytes);
  noBackup[last * SS + 40]! ^= 0x10;
  const two = await run(t, reference, { name: 'GPT, backup unusable', base: noBackup, targets: primary, seed: 0x6e8 });
  t.ok(two.refused > 0, 'with the backup gone, damage to the primary is refused');

  // Damage behind valid CRCs (a buggy tool, not bit rot): the field checks alone must hold.
  const sealed = await run(t, reference, {
    name: 'GPT, damage with recomputed CRCs',
    base: bytes,
    targets: [...primary, ...backup],
    seed: 0x6e9,
    map: async (r) => mapper(await resealed(r)),
  });
  t.ok(sealed.refused > 0, 'resealed damage is refused when the fields make no sense');
});

t.test('MBR with logical partitions (sfdisk): damaged tables yield the pristine partitions or a refusal', async (t) => {
  const s = await Scratch.create(t);
  const disk = s.path('mbr.raw');
  const size = 64 * MiB;
  await garbageFile(disk, size);
  await sh('dd', ['if=/dev/zero', `of=${disk}`, 'bs=512', 'count=1', 'conv=notrunc', 'status=none']);
  const layout = 'label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=20480, type=c\nstart=43008, type=5\nstart=45056, size=20480, type=83\nstart=67584, type=c\n';
  await sh('bash', ['-c', `sfdisk --quiet ${disk} <<'EOT'\n${layout}EOT`]);
  await fill(s, disk, 2048 * SS, 10 * MiB, 'ext4', 'p1');
  await fill(s, disk, 22528 * SS, 10 * MiB, 'vfat', 'p2');
  await fill(s, disk, 45056 * SS, 10 * MiB, 'ext4', 'p5');
  await fill(s, disk, 67584 * SS, size - 67584 * SS, 'vfat', 'p6');
  // The EBRs, found the way a reader finds them (relative links from the extended start).
  const bytes = await readFile(disk);
  const ebrs: number[] = [];
  for (let ebr = 43008; ; ) {
    ebrs.push(ebr);
    const next = bytes.readUInt32LE(ebr * SS + 446 + 16 + 8);
    if (next === 0) break;
    ebr = 43008 + next;
  }
  t.equal(ebrs.length, 2, 'two EBRs');
  const targets: Target[] = [
    { name: 'MBR', offset: 0, length: SS },
    { name: 'MBR entries', offset: 446, length: 66 },
  ];
  ebrs.forEach((ebr, i) => {
    targets.push({ name: `EBR ${i + 1}`, offset: ebr * SS, length: SS });
    targets.push({ name: `EBR ${i + 1} entries`, offset: ebr * SS + 446, length: 66 });
  });
  const report = await run(t, await pristineMap(t, bytes, ['ext4', 'vfat', 'ext4', 'vfat']), { name: 'MBR', base: bytes, targets, seed: 0xd05 });

  // Logical partition 5 grown over the second EBR (but short of partition 6): the image would
  // keep the EBR only as part of partition 5's filesystem map, which does not hold it.
  const grown = patchedReader(bufferReader(bytes), [{ offset: ebrs[0]! * SS + 446 + 12, bytes: u32le(ebrs[1]! + 1 - 45056) }]);
  const err = await buildDiskMap(grown, SS).then(() => null, (e: unknown) => e);
  t.ok(err instanceof PartitionTableError, 'a partition over an EBR: PartitionTableError');
  t.match((err as Error | null)?.message, /partition 5 covers the extended boot record at sector/, 'message names the partition and the EBR');
  t.ok(report.refused > 0, 'some damage is refused');
});
