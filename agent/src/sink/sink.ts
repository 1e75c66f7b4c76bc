// Where the image bytes go. A sink receives the image strictly in order, exactly once.
export interface Sink {
  /** For messages: "file /x/y.qcow2", "stdout", "glance image <id>". */
  readonly description: string;
  write(chunk: Buffer): Promise<void>;
  /** All bytes written: make the result visible (rename, close, commit). */
  finish(): Promise<void>;
  /** Something failed: remove every trace of the partial result. Never throws. */
  abort(): Promise<void>;
}
