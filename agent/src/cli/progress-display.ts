// Progress for the CLI: a live line on a terminal (phase, percent, MB/s, ETA), or a pino log
// line every few seconds otherwise.
import type { Logger } from 'pino';
import { reportingProgress, type Progress, type ProgressState } from '../encoder/progress.js';

const rate = (s: ProgressState) => (s.seconds > 0 ? s.bytes / s.seconds : 0);

export function terminalProgress(stream: NodeJS.WriteStream = process.stderr): Progress & { done(): void } {
  const draw = (s: ProgressState) => {
    const r = rate(s);
    const pct = s.total ? (100 * s.bytes) / s.total : 100;
    const eta = r > 0 ? (s.total - s.bytes) / r : 0;
    stream.write(`\r\x1b[K${s.phase.padEnd(8)} ${pct.toFixed(1).padStart(5)}%  ${(r / 1e6).toFixed(0).padStart(5)} MB/s  ETA ${clock(eta)}`);
  };
  return reportingProgress((s, event) => {
    draw(s);
    if (event === 'end') stream.write('\n');
  }, 200);
}

export function logProgress(log: Logger, everyMs = 5000): Progress & { done(): void } {
  return reportingProgress((s, event) => {
    if (event === 'phase') return;
    log.info({ phase: s.phase, bytes: s.bytes, total: s.total, percent: s.total ? Math.round((1000 * s.bytes) / s.total) / 10 : 100, mbPerSec: Math.round(rate(s) / 1e5) / 10 }, 'progress');
  }, everyMs);
}

function clock(s: number): string {
  const t = Math.round(s);
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}`;
}
