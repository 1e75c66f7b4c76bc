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
