// Where the image bytes go. A sink receives the image strictly in order, exactly once.
export interface Sink {
  /** For messages: "file /x/y.qcow2", "stdout", "glance image <id>". */
  readonly description: string;
  /** Resolves once the sink no longer needs `chunk`: callers reuse their buffers. */
  write(chunk: Buffer): Promise<void>;
  /** All bytes written: make the result visible (rename, close, commit). */
  finish(): Promise<void>;
  /** Something failed: remove every trace of the partial result. Never throws. */
  abort(): Promise<void>;
}

/** A sink that can also be written at any offset (a local file). */
export interface SeekableSink extends Sink {
  writeAt(chunk: Buffer, position: number): Promise<void>;
  /** Where the bytes written so far can be read back (to hash the finished file). */
  readonly partialPath: string;
}

export function isSeekable(s: Sink): s is SeekableSink {
  return typeof (s as SeekableSink).writeAt === 'function';
}
