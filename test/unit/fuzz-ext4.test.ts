// Seeded corruption fuzz of the ext2/3/4 probe (issue 11): on real mke2fs images with live and
// deleted files, random bytes of the superblock, group descriptors, block and inode bitmaps and
// inode tables are damaged; each damaged copy must be refused with a one-line FilesystemError or
// mapped so that nothing the pristine filesystem used (and no damaged byte) is left out.
import t from 'tap';
import { extProbe } from '../../agent/src/map/filesystems/ext4.js';
import { openSource } from '../../agent/src/source/open-source.js';
import { fuzz, type Target } from './corruption.js';
import { garbageFile, MiB, Scratch, sh, writeRandomFiles } from './fixtures-fs.js';

interface Image {
  name: string;
  args: string[];
  sizeMiB: number;
  seed: number;
}

const images: Image[] = [
  // Debian 12 defaults for a normal-sized fs (metadata_csum, 64bit, flex_bg), 8 groups.
  { name: 'ext4 defaults (metadata_csum, 64bit, flex_bg)', args: ['-t', 'ext4', '-T', 'default', '-g', '4096'], sizeMiB: 96, seed: 1101 },
  // No metadata_csum: uninit_bg descriptors (crc16), unchecksummed bitmaps.
  { name: 'ext4 without metadata_csum (uninit_bg)', args: ['-t', 'ext4', '-T', 'default', '-O', '^metadata_csum', '-g', '4096'], sizeMiB: 96, seed: 2202 },
  // No group checksums at all, indirect block maps.
  { name: 'ext3', args: ['-t', 'ext3', '-T', 'default', '-g', '4096'], sizeMiB: 64, seed: 3303 },
];

const CASES = 300;

/** Which check refused: the message with numbers and hex left out. */
function kind(message: string): string {
  return message.replace(/0x[0-9a-f]+|\d+/g, 'N').replace(/ at block N.*| \(.*\)$/, '').slice(0, 70);
}
const FILES = { 'a.bin': 3 * MiB + 5, 'dir/b.bin': 200_000, 'dir/sub/c.txt': 60, 'dir/sub/d.bin': 9000, 'e.bin': 600_000, 'f/g/h.bin': 70_000 };
const DELETED = { 'old1.bin': 2 * MiB, 'dir/old2.bin': 500_000, 'f/old3.bin': 40_000 };

/** Metadata byte ranges from dumpe2fs: the superblock, descriptor blocks, bitmaps, used inode tables. */
async function targets(img: string): Promise<Target[]> {
  const out = await sh('dumpe2fs', [img]);
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(out)?.[1]);
  const bs = field('Block size');
  const ipg = field('Inodes per group');
  const isz = field('Inode size');
  const bpg = field('Blocks per group');
  const csum = /^Filesystem features:.*(metadata_csum|uninit_bg)/m.test(out);
  const list: Target[] = [{ name: 'superblock', offset: 1024, length: 1024 }];
  const gdt = /Group descriptors at (\d+)-(\d+)/.exec(out)!;
  list.push({ name: 'descriptor table', offset: Number(gdt[1]) * bs, length: (Number(gdt[2]) - Number(gdt[1]) + 1) * bs });
  for (const [g, group] of out.split(/^Group \d+:/m).slice(1).entries()) {
    const at = (what: string): number => Number(new RegExp(`${what} at (\\d+)`).exec(group)![1]);
    list.push({ name: `group ${g} block bitmap`, offset: at('Block bitmap') * bs, length: bs });
    // Twice more for the bytes that hold the bits of an initialised group (the rest is padding).
    if (!/BLOCK_UNINIT/.test(group.split('\n')[0]!)) {
      for (const k of [1, 2]) list.push({ name: `group ${g} block bitmap bits (${k})`, offset: at('Block bitmap') * bs, length: bpg / 8 });
    }
    list.push({ name: `group ${g} inode bitmap`, offset: at('Inode bitmap') * bs, length: bs });
    // Only the part of the table that may hold used inodes is metadata; the never-used tail is
    // left out of the map on purpose (damage there changes nothing anyone reads).
    const unused = !csum ? 0 : /INODE_UNINIT/.test(group.split('\n')[0]!) ? ipg : Number(/(\d+) unused inodes/.exec(group)?.[1] ?? 0);
    const blocks = Math.ceil(((ipg - unused) * isz) / bs);
    if (blocks > 0) list.push({ name: `group ${g} inode table`, offset: at('Inode table') * bs, length: blocks * bs });
  }
  return list;
}

for (const image of images) {
  t.test(image.name, async (t) => {
    const s = await Scratch.create(t);
    const img = s.path('fuzz.img');
    await garbageFile(img, image.sizeMiB * MiB);
    await sh('mke2fs', ['-q', '-F', '-E', 'nodiscard', ...image.args, img]);
    await s.withMount(img, 'noinit_itable', async (dir) => {
      await writeRandomFiles(dir, { ...FILES, ...DELETED });
      await sh('sync', ['-f', dir]);
      await sh('rm', Object.keys(DELETED).map((n) => `${dir}/${n}`));
    });
    const src = await openSource(img);
    t.teardown(() => src.close());
    const pristine = await extProbe.probe(src);
    if (!pristine) throw new Error('not recognised');
    const kinds = new Map<string, number>();
    const report = await fuzz({
      base: src,
      reference: pristine.used,
      targets: await targets(img),
      map: async (r) => {
        try {
          return (await extProbe.probe(r))?.used ?? null;
        } catch (err) {
          const k = kind(err instanceof Error ? err.message : String(err));
          kinds.set(k, (kinds.get(k) ?? 0) + 1);
          throw err;
        }
      },
      cases: CASES,
      seed: image.seed,
    });
    t.comment(
      `${image.name}: ${report.cases} cases: ${report.refused} refused, ${report.unchanged} unchanged, ` +
        `${report.widened} widened, ${report.narrowedSafely} narrowed safely, ${report.notRecognised} not recognised, ` +
        `${report.failures.length} failures`,
    );
    for (const [k, n] of [...kinds].sort((a, b) => b[1] - a[1])) t.comment(`  ${n} x ${k}`);
    t.ok(report.cases >= 200, `${report.cases} cases`);
    t.ok(report.refused > 0, 'some corruptions are detected');
    t.same(report.failures, [], 'no crash, nothing used left out');
  });
}
