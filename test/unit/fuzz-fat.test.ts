// Seeded corruption fuzz of the FAT probe (issue 11): real FAT16 and FAT32 images made by
// mkfs.vfat over garbage, holding files written with mcopy and some deleted with mdel (so free
// clusters hold stale, non-zero data). Each case XORs a few bytes of one metadata structure
// (boot sector, its BPB, FSInfo and the backup boot sector on FAT32, each FAT copy, the root
// directory); the probe must then refuse in one line (the partition is copied whole) or keep
// every byte the pristine map keeps. See corruption.ts.
import t from 'tap';
import { readFile } from 'node:fs/promises';
import { fatProbe } from '../../agent/src/map/filesystems/fat.js';
import { bufferReader, type ByteReader } from '../../agent/src/source/byte-reader.js';
import { fuzz, type Target } from './corruption.js';
import { garbageFile, MiB, Scratch, sh, writeRandomFiles } from './fixtures-fs.js';

interface Variant {
  name: string;
  args: string[];
  sizeMiB: number;
  seed: number;
}

const variants: Variant[] = [
  { name: 'FAT16', args: ['-F', '16', '-s', '4'], sizeMiB: 32, seed: 0x16f16 },
  { name: 'FAT32', args: ['-F', '32', '-s', '1'], sizeMiB: 40, seed: 0x32f32 },
];
const CASES = 240;

const mapper = async (r: ByteReader) => (await fatProbe.probe(r))?.used ?? null;

for (const v of variants) {
  t.test(`${v.name}: damaged metadata is refused or still mapped in full`, async (t) => {
    const s = await Scratch.create(t);
    const img = s.path('fs.img');
    await garbageFile(img, v.sizeMiB * MiB);
    await sh('mkfs.vfat', [...v.args, '-n', 'FUZZ', img]);
    const src = s.path('src');
    await writeRandomFiles(src, {
      'a.bin': 700_000, 'b.txt': 3000, 'EFI/BOOT/BOOTX64.EFI': 900_000, 'EFI/debian/grub.cfg': 200,
      'EFI/debian/shim.efi': 400_000, 'old1.bin': 1 * MiB, 'EFI/old2.bin': 300_000, 'z.bin': 5,
    });
    await sh('mcopy', ['-s', '-i', img, `${src}/a.bin`, `${src}/old1.bin`, `${src}/EFI`, `${src}/b.txt`, '::/']);
    await sh('mdel', ['-i', img, '::/old1.bin', '::/EFI/old2.bin']);
    await sh('mcopy', ['-i', img, `${src}/z.bin`, '::/']);

    const data = await readFile(img);
    const base = bufferReader(data);
    const pristine = await fatProbe.probe(base);
    if (!pristine) throw new Error('the pristine image is not recognised');

    const bps = data.readUInt16LE(11);
    const reserved = data.readUInt16LE(14);
    const numFats = data[16]!;
    const fat32 = data.readUInt16LE(22) === 0;
    const fatSectors = fat32 ? data.readUInt32LE(36) : data.readUInt16LE(22);
    const fatStart = (k: number): number => (reserved + k * fatSectors) * bps;
    const rootEntries = data.readUInt16LE(17);
    const dataStart = fatStart(numFats) + rootEntries * 32;
    const clusterBytes = bps * data[13]!;
    // The part of each FAT that holds the allocated entries, and the whole copy.
    const headBytes = Math.min(fatSectors * bps, 2048);
    const targets: Target[] = [
      { name: 'boot sector', offset: 0, length: 512 },
      { name: 'BPB', offset: 11, length: (fat32 ? 90 : 62) - 11 },
      { name: 'root directory', offset: fat32 ? dataStart + (data.readUInt32LE(44) - 2) * clusterBytes : fatStart(numFats), length: 512 },
    ];
    for (let k = 0; k < numFats; k++) {
      targets.push({ name: `FAT ${k + 1} (used entries)`, offset: fatStart(k), length: headBytes });
      targets.push({ name: `FAT ${k + 1}`, offset: fatStart(k), length: fatSectors * bps });
    }
    if (fat32) {
      const fsinfo = data.readUInt16LE(48);
      const backup = data.readUInt16LE(50);
      targets.push({ name: 'FSInfo', offset: fsinfo * bps, length: 512 });
      targets.push({ name: 'backup boot sector', offset: backup * bps, length: 512 });
    }

    const started = Date.now();
    const report = await fuzz({ base, reference: pristine.used, targets, map: mapper, cases: CASES, seed: v.seed });
    t.comment(
      `${v.name}: ${report.cases} cases in ${Date.now() - started} ms: ${report.unchanged} unchanged, ${report.widened} widened, ` +
        `${report.narrowedSafely} narrowed safely, ${report.refused} refused, ${report.notRecognised} not recognised`,
    );
    for (const m of report.sampleRefusals) t.comment(`  refused: ${m}`);
    t.ok(report.cases >= 200, 'at least 200 cases');
    t.same(report.failures, [], 'no crash and no used non-zero byte left out');
    t.ok(report.refused > 0, 'some damage is refused');
  });
}
