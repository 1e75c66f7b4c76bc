#!/usr/bin/env node
// Prints, one per line and sorted, the repository files the agent needs at run time: the
// compiled agent (dist/agent/src, no maps or typings), package.json, and the production
// packages of package-lock.json (not dev, present on disk) minus what only builds or documents
// them. The ramdisk and the self-contained `bmsnap` bundle both ship exactly this list.
import { readdirSync, readFileSync, statSync, existsSync } from 'node:fs';
import { join, relative } from 'node:path';

const repo = process.argv[2] ?? process.cwd();
const lock = JSON.parse(readFileSync(join(repo, 'package-lock.json'), 'utf8'));

// Not needed to run: docs, typings, the native addon's sources and build tree (but its .node),
// tests. Licence files stay.
const SKIP = [
  /\.(md|markdown|map|ts|mts|cts|gyp|gypi|cc|c|h|hpp|tsbuildinfo)$/i,
  // only at a package's top level: code may live in dist/doc/ and the like
  /^node_modules\/(@[^/]+\/)?[^/]+\/(test|tests|__tests__|docs|examples?|benchmarks?|\.github)\//i,
  /^node_modules\/zstd-napi\/(deps|src|build)\//,
];
const NATIVE = /^node_modules\/[^/]+\/build\/Release\/[^/]+\.node$/;
const keep = (p) => NATIVE.test(p) || !SKIP.some((re) => re.test(p));

function walk(dir, out, stopAtNodeModules) {
  for (const name of readdirSync(dir)) {
    const full = join(dir, name);
    const st = statSync(full, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.isDirectory()) {
      if (stopAtNodeModules && name === 'node_modules') continue;   // nested packages are listed on their own
      walk(full, out, stopAtNodeModules);
    } else if (st.isFile()) {
      out.push(relative(repo, full));
    }
  }
}

const files = ['package.json'];
walk(join(repo, 'dist/agent/src'), files, false);
for (const [path, meta] of Object.entries(lock.packages ?? {})) {
  if (!path || meta.dev || meta.link || !existsSync(join(repo, path))) continue;
  walk(join(repo, path), files, true);
}
const out = [...new Set(files)]
  .filter((p) => !p.startsWith('dist/') || (p.endsWith('.js') && !p.endsWith('.d.ts')))
  .filter((p) => p.startsWith('dist/') || p === 'package.json' || keep(p))
  .sort();
process.stdout.write(out.join('\n') + '\n');
