// Progress for the CLI: a live line on a terminal (phase, percent, MB/s, ETA), or a pino log
// line every few seconds otherwise.
import type { Logger } from 'pino';
import type { Progress } from '../encoder/progress.js';

export function terminalProgress(stream: NodeJS.WriteStream = process.stderr): Progress & { done(): void } {
  let name = '';
  let total = 0;
  let done = 0;
  let started = 0;
  let lastDraw = 0;
  const draw = (force = false) => {
    const now = Date.now();
    if (!force && now - lastDraw < 200) return;
    lastDraw = now;
    const secs = (now - started) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    const pct = total ? (100 * done) / total : 100;
    const eta = rate > 0 ? (total - done) / rate : 0;
    stream.write(`\r\x1b[K${name.padEnd(8)} ${pct.toFixed(1).padStart(5)}%  ${(rate / 1e6).toFixed(0).padStart(5)} MB/s  ETA ${clock(eta)}`);
  };
  return {
    phase(n, t) {
      if (name) draw(true);
      if (name) stream.write('\n');
      name = n; total = t; done = 0; started = Date.now(); lastDraw = 0;
      draw(true);
    },
    advance(bytes) { done += bytes; draw(); },
    done() { if (name) { draw(true); stream.write('\n'); } },
  };
}

export function logProgress(log: Logger, everyMs = 5000): Progress & { done(): void } {
  let name = '';
  let total = 0;
  let done = 0;
  let started = 0;
  let last = 0;
  const report = () => {
    const secs = (Date.now() - started) / 1000;
    log.info({ phase: name, bytes: done, total, percent: total ? Math.round((1000 * done) / total) / 10 : 100, mbPerSec: secs > 0 ? Math.round(done / secs / 1e5) / 10 : 0 }, 'progress');
  };
  return {
    phase(n, t) { if (name) report(); name = n; total = t; done = 0; started = last = Date.now(); },
    advance(bytes) { done += bytes; if (Date.now() - last >= everyMs) { last = Date.now(); report(); } },
    done() { if (name) report(); },
  };
}

function clock(s: number): string {
  const t = Math.round(s);
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}`;
}
