// Explicit error classes (undici style): every failure the user can cause or meet has a class,
// a stable code and a one-line message. The CLI prints `bmsnap: <message>` and exits non-zero;
// anything that is not a BmsnapError is a bug and is reported as such.

export class BmsnapError extends Error {
  readonly code: string;
  constructor(message: string, code: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Bad command line or options. Exit status 2. */
export class UsageError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_USAGE');
  }
}

/** The source cannot be opened, sized or read. */
export class SourceError extends BmsnapError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'BMSNAP_SOURCE', options);
  }
}

/** The partition table is present but inconsistent (bad CRC, entries out of range, overlaps). */
export class PartitionTableError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_PARTITION_TABLE');
  }
}

/** A filesystem was recognised by its magic but its metadata is not sane. */
export class FilesystemError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_FILESYSTEM');
  }
}

/** The source changed between the sizing pass and the emitting pass. */
export class SourceChangedError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_SOURCE_CHANGED');
  }
}

/** The output cannot be written. */
export class OutputError extends BmsnapError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'BMSNAP_OUTPUT', options);
  }
}

/** This node cannot do what was asked (in-band modes: not root, no kexec, locked down, ...). */
export class RefusedError extends BmsnapError {
  constructor(message: string) {
    super(message, 'BMSNAP_REFUSED');
  }
}

/** The run was interrupted (SIGINT/SIGTERM). */
export class AbortedError extends BmsnapError {
  constructor(message = 'interrupted') {
    super(message, 'BMSNAP_ABORTED');
  }
}

/** One line, no stack: what the CLI and the agent show for a failure. */
export function describeError(err: unknown): string {
  if (err instanceof BmsnapError) return err.message;
  if (err instanceof Error) return `internal error: ${err.message}`;
  return `internal error: ${String(err)}`;
}
