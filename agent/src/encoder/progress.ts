// How the encoder reports progress; fronts (CLI, IPA agent) decide how to show it.
export interface Progress {
  /** A new phase starts; `total` is the number of source bytes it will go through. */
  phase(name: 'sizing' | 'writing', total: number): void;
  /** `bytes` more source bytes processed in the current phase. */
  advance(bytes: number): void;
}

export const noProgress: Progress = { phase() {}, advance() {} };
