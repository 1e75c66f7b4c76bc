// How the encoder reports progress; fronts (CLI, IPA agent) decide how to show it.
export interface Progress {
  /**
   * A new phase starts; `total` is the number of bytes it will go through (source bytes for
   * sizing and writing, image bytes for hashing a finished file).
   */
  phase(name: 'sizing' | 'writing' | 'hashing', total: number): void;
  /** `bytes` more bytes processed in the current phase. */
  advance(bytes: number): void;
}

export const noProgress: Progress = { phase() {}, advance() {} };

/** Where a phase stands, for fronts to format. */
export interface ProgressState {
  phase: string;
  bytes: number;
  total: number;
  /** Seconds since the phase started. */
  seconds: number;
}

/**
 * The bookkeeping every front shares: tracks the phase and its bytes, and calls `report` when a
 * phase starts ('phase'), at most every `everyMs` while it runs ('tick'), and when it ends
 * ('end': the next phase starts, or done()).
 */
export function reportingProgress(report: (s: ProgressState, event: 'phase' | 'tick' | 'end') => void, everyMs: number): Progress & { done(): void } {
  let phase = '';
  let total = 0;
  let bytes = 0;
  let started = 0;
  let last = 0;
  const state = (): ProgressState => ({ phase, bytes, total, seconds: (Date.now() - started) / 1000 });
  return {
    phase(name, t) {
      if (phase) report(state(), 'end');
      phase = name; total = t; bytes = 0; started = last = Date.now();
      report(state(), 'phase');
    },
    advance(n) {
      bytes += n;
      if (Date.now() - last >= everyMs) { last = Date.now(); report(state(), 'tick'); }
    },
    done() { if (phase) report(state(), 'end'); },
  };
}
