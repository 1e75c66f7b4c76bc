// A long step's progress, as the conductor sees it in the RUNNING command result (and the
// bmsnap conductor plugin copies onto the node): phase, bytes, percent, MB/s, once a second.
import { reportingProgress, type Progress } from '../../encoder/progress.js';
import type { CommandContext } from '../command-runner.js';

export function stepProgress(ctx: CommandContext): Progress {
  return reportingProgress((p, event) => {
    if (event === 'end') return;
    ctx.report({ phase: p.phase, bytes: p.bytes, total: p.total, percent: p.total ? Math.round((1000 * p.bytes) / p.total) / 10 : 0, mb_per_s: p.seconds > 0 ? Math.round(p.bytes / p.seconds / 1e5) / 10 : 0 });
  }, 1000);
}
