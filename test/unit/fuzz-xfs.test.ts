// Seeded metadata corruption of real mkfs.xfs images (test/unit/corruption.ts): every damaged
// copy must either be refused with a one-line FilesystemError or still be mapped with every
// byte the pristine filesystem uses. Targets are the structures the XFS map depends on or sits
// next to: the primary superblock, each AG's AGF, AGI and AGFL sectors, every bnobt and cntbt
// block, and the inobt/finobt roots, all located with xfs_db (not with the code under test).
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { xfsProbe } from '../../agent/src/map/filesystems/xfs.js';
import { readBytes, type ByteReader } from '../../agent/src/source/byte-reader.js';
import { openSource } from '../../agent/src/source/open-source.js';
import { fuzz, type FuzzReport, type Target } from './corruption.js';
import { garbageFile, MiB, Scratch, sh, shStatus, writeRandomFiles } from './fixtures-fs.js';

const SIZE = 300 * MiB; // mkfs.xfs refuses anything smaller
const CASES = 300;

async function xfsDb(img: string, cmds: string[]): Promise<string> {
  return sh('xfs_db', ['-r', ...cmds.flatMap((c) => ['-c', c]), img]);
}

function field(text: string, name: string): number | null {
  const m = new RegExp(`^${name} = (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

function need(text: string, name: string): number {
  const v = field(text, name);
  if (v === null) throw new Error(`xfs_db printed no ${name}:\n${text}`);
  return v;
}

interface Layout {
  targets: Target[];
  /** Highest free-space btree, in levels. */
  maxFreeLevels: number;
  version: number;
}

/**
 * The btree blocks under the block xfs_db reaches with PATH (e.g. agf 0, addr bnoroot), as
 * AG block numbers, with each block's level.
 */
async function btreeBlocks(img: string, path: string[], agbno: number): Promise<{ agbno: number; level: number }[]> {
  const out = await xfsDb(img, [...path, 'print']);
  const level = need(out, 'level');
  const found = [{ agbno, level }];
  if (level === 0) return found;
  const ptrs = /^ptrs\[[^\]]*\] = (.*)$/m.exec(out)?.[1] ?? '';
  const children = [...ptrs.matchAll(/(\d+):(\d+)/g)].map((m) => ({ index: Number(m[1]), agbno: Number(m[2]) }));
  if (!children.length) throw new Error(`xfs_db printed no ptrs for a level-${level} block:\n${out}`);
  for (const c of children) found.push(...(await btreeBlocks(img, [...path, `addr ptrs[${c.index}]`], c.agbno)));
  return found;
}

async function layout(img: string, base: ByteReader): Promise<Layout> {
  const sb = await xfsDb(img, ['sb 0', 'print blocksize sectsize agblocks agcount versionnum']);
  const bs = need(sb, 'blocksize');
  const sect = need(sb, 'sectsize');
  const agBlocks = need(sb, 'agblocks');
  const agCount = need(sb, 'agcount');
  const version = Number.parseInt(/^versionnum = (0x[0-9a-f]+)$/m.exec(sb)?.[1] ?? '0', 16) & 0xf;
  const targets: Target[] = [{ name: 'superblock', offset: 0, length: sect }];
  let maxFreeLevels = 0;
  for (let ag = 0; ag < agCount; ag++) {
    const agStart = ag * agBlocks * bs;
    targets.push(
      { name: `AG ${ag} AGF`, offset: agStart + sect, length: sect },
      { name: `AG ${ag} AGI`, offset: agStart + 2 * sect, length: sect },
      { name: `AG ${ag} AGFL`, offset: agStart + 3 * sect, length: sect },
    );
    if (version === 4) {
      // No CRC: most of a v4 AGF is spare; aim some cases at the fields in use (first 64 bytes).
      targets.push({ name: `AG ${ag} AGF fields`, offset: agStart + sect, length: 64 });
    }
    const agf = await xfsDb(img, [`agf ${ag}`, 'print bnoroot cntroot bnolevel cntlevel']);
    for (const tree of ['bno', 'cnt']) {
      maxFreeLevels = Math.max(maxFreeLevels, need(agf, `${tree}level`));
      const blocks = await btreeBlocks(img, [`agf ${ag}`, `addr ${tree}root`], need(agf, `${tree}root`));
      for (const b of blocks) {
        const offset = agStart + b.agbno * bs;
        targets.push({ name: `AG ${ag} ${tree}bt block ${b.agbno} (level ${b.level})`, offset, length: bs });
        if (version === 4) {
          // The header and the records or keys in use, where a v4 flip can change something.
          const numrecs = (await readBytes(base, offset + 6, 2)).readUInt16BE(0);
          const used = b.level === 0 ? 16 + 8 * numrecs : bs;
          targets.push({ name: `AG ${ag} ${tree}bt block ${b.agbno} header+records`, offset, length: Math.min(bs, used) });
        }
      }
    }
    const agi = await xfsDb(img, [`agi ${ag}`, 'print']);
    for (const [name, key] of [['inobt', 'root'], ['finobt', 'free_root']] as const) {
      const root = field(agi, key);
      if (root) targets.push({ name: `AG ${ag} ${name} root ${root}`, offset: agStart + root * bs, length: bs });
    }
  }
  return { targets, maxFreeLevels, version };
}

async function runFuzz(t: Test, img: string, seed: number): Promise<{ report: FuzzReport; layout: Layout }> {
  const base = await openSource(img);
  t.teardown(() => base.close());
  const pristine = await xfsProbe.probe(base);
  if (!pristine) throw new Error('xfs probe did not recognise the pristine image');
  t.equal(pristine.method, 'xfs free-space btrees', 'the pristine image is mapped from its btrees');
  const l = await layout(img, base);
  const report = await fuzz({
    base,
    reference: pristine.used,
    targets: l.targets,
    map: async (r) => (await xfsProbe.probe(r))?.used ?? null,
    cases: CASES,
    seed,
  });
  t.comment(
    `v${l.version}, ${l.targets.length} targets, free-space btrees up to ${l.maxFreeLevels} levels, seed ${seed}: ` +
      `${report.cases} cases, ${report.refused} refused, ${report.unchanged} unchanged, ${report.widened} widened, ` +
      `${report.narrowedSafely} narrowed safely, ${report.notRecognised} not recognised, ${report.failures.length} failures`,
  );
  for (const m of report.sampleRefusals) t.comment(`  refused: ${m}`);
  t.ok(report.cases >= 200, `${report.cases} cases`);
  t.same(report.failures, [], 'no crash, no used byte left out');
  t.ok(report.refused > 0, `some corruptions were detected (${report.refused})`);
  return { report, layout: l };
}

t.test('xfs v5 (Debian defaults), files, deleted files, fragmented free space', async (t) => {
  const s = await Scratch.create(t);
  const img = s.path('v5.img');
  await garbageFile(img, SIZE);
  await sh('mkfs.xfs', ['-q', '-f', '-K', img]);
  await s.withMount(img, 'rw', async (dir) => {
    await writeRandomFiles(dir, { 'a.bin': 3 * MiB + 123, 'dir/b.bin': 300_000, 'dir/sub/c.txt': 100, 'stale.bin': 5 * MiB });
    // One-block files, every other one deleted: more free extents than a 4 KiB leaf holds.
    const small = join(dir, 'small');
    await mkdir(small);
    for (let i = 0; i < 1200; i++) await writeFile(join(small, `f${i}`), randomBytes(3000));
    await sh('sync', ['-f', dir]);
    for (let i = 0; i < 1200; i += 2) await rm(join(small, `f${i}`));
    await rm(join(dir, 'stale.bin'));
  });
  const { layout: l } = await runFuzz(t, img, 0x5eed0005);
  t.equal(l.version, 5);
  t.ok(l.maxFreeLevels >= 2, `a free-space btree has node blocks (${l.maxFreeLevels} levels)`);
});

t.test('xfs v4 (crc=0), 1 KiB blocks, files, "deleted" files, fragmented free space', async (t) => {
  // The host kernel does not mount v4: files come from a protofile, and every other small one is
  // then "deleted" by marking its inode free with xfs_db and letting xfs_repair reclaim its
  // blocks and rebuild the free-space btrees, which leaves them fragmented.
  const s = await Scratch.create(t);
  const src = s.path('src');
  const small = Array.from({ length: 1200 }, (_, i) => `f${i}`);
  await writeRandomFiles(src, { 'a.bin': 3 * MiB + 123, 'b.bin': 300_000, 'c.txt': 100, ...Object.fromEntries(small.map((f) => [`small/${f}`, 1500])) });
  const proto = [
    'bmsnap', '0 0', 'd--755 0 0',
    ...['a.bin', 'b.bin', 'c.txt'].map((f) => `${f} ---644 0 0 ${join(src, f)}`),
    'small d--755 0 0', ...small.map((f) => `${f} ---644 0 0 ${join(src, 'small', f)}`), '$',
    '$', '',
  ];
  await writeFile(s.path('proto'), proto.join('\n'));
  const img = s.path('v4.img');
  await garbageFile(img, SIZE);
  await sh('mkfs.xfs', ['-q', '-f', '-K', '-m', 'crc=0', '-b', 'size=1024', '-p', s.path('proto'), img]);
  const listing = await xfsDb(img, ['path /small', 'ls']);
  const doomed = [...listing.matchAll(/^\s*\d+\s+(\d+)\s+regular\s+\S+\s+\d+\s+f(\d+) /gm)].filter((m) => Number(m[2]) % 2 === 0).map((m) => m[1]!);
  t.equal(doomed.length, 600, 'every other small file found');
  await sh('xfs_db', ['-x', ...doomed.flatMap((ino) => ['-c', `inode ${ino}`, '-c', 'write core.mode 0']), img]);
  await shStatus('xfs_repair', [img]);
  t.equal((await shStatus('xfs_repair', ['-n', img])).exitCode, 0, 'repaired image is consistent');
  t.equal((await xfsDb(img, ['path /small', 'ls'])).match(/ regular /g)?.length, 600, '600 small files left');
  const { layout: l } = await runFuzz(t, img, 0x5eed0004);
  t.equal(l.version, 4);
  t.ok(l.maxFreeLevels >= 2, `a free-space btree has node blocks (${l.maxFreeLevels} levels)`);
});
