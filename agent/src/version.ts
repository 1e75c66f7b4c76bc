import { readFileSync } from 'node:fs';

/** bmsnap's version, from package.json (two levels above dist/agent/src or agent/src). */
export const VERSION: string = (() => {
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'bmsnap' && pkg.version) return pkg.version;
    } catch { /* try the next layout */ }
  }
  return '0.0.0';
})();
