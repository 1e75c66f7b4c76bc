// The agent's command history, as ironic-python-agent keeps it: one command at a time, every
// result kept in order (the conductor reads the LAST entry of GET /v1/commands to see whether a
// step finished), synchronous commands answered when done, asynchronous ones answered RUNNING.
import { randomUUID } from 'node:crypto';
import { describeError } from '../errors.js';

export type CommandStatus = 'RUNNING' | 'SUCCEEDED' | 'FAILED';

export interface CommandError {
  type: string;
  code: number;
  message: string;
  details: string;
}

/** The exact shape Ironic parses (ironic-python-agent's BaseCommandResult). */
export interface CommandResult {
  id: string;
  command_name: string;
  command_status: CommandStatus;
  command_error: CommandError | null;
  command_result: unknown;
}

export interface CommandContext {
  /** For long commands: a progress object shown in the RUNNING result and in /v1/status. */
  report(progress: Record<string, unknown>): void;
  signal: AbortSignal;
}

export interface CommandSpec {
  /** Runs in the background; the POST answers RUNNING at once (unless ?wait=true). */
  async: boolean;
  run(params: Record<string, unknown>, ctx: CommandContext): Promise<unknown>;
}

/** Raised by handlers for a failure the conductor should see as the step's error. */
export class CommandFailure extends Error {
  constructor(message: string, readonly type = 'CommandExecutionError', readonly details?: string) {
    super(message);
  }
}

export class BusyError extends Error {
  constructor(readonly running: string) {
    super(`Agent is busy: executing command ${running}`);
  }
}

interface Entry { result: CommandResult; done: Promise<void>; controller: AbortController }

export class CommandRunner {
  private readonly history: Entry[] = [];
  /** Called when an asynchronous command ends (the agent then heartbeats at once). */
  onAsyncDone: () => void = () => {};

  list(): CommandResult[] {
    return this.history.map((e) => e.result);
  }

  get(id: string): Entry | undefined {
    return this.history.find((e) => e.result.id === id);
  }

  running(): CommandResult | undefined {
    const last = this.history[this.history.length - 1]?.result;
    return last?.command_status === 'RUNNING' ? last : undefined;
  }

  /** Starts a command; resolves with its entry (already finished for synchronous commands). */
  start(shortName: string, spec: CommandSpec, params: Record<string, unknown>): Entry {
    const busy = this.running();
    if (busy) throw new BusyError(busy.command_name);
    const result: CommandResult = { id: randomUUID(), command_name: shortName, command_status: 'RUNNING', command_error: null, command_result: null };
    const controller = new AbortController();
    const ctx: CommandContext = {
      report: (progress) => { if (result.command_status === 'RUNNING') result.command_result = { progress }; },
      signal: controller.signal,
    };
    const done = (async () => {
      try {
        const value = await spec.run(params, ctx);
        result.command_result = value ?? null;
        result.command_status = 'SUCCEEDED';
      } catch (err) {
        result.command_result = null;
        result.command_status = 'FAILED';
        result.command_error = {
          type: err instanceof CommandFailure ? err.type : 'CommandExecutionError',
          code: 500,
          message: err instanceof CommandFailure ? err.message : 'Command execution failed',
          details: err instanceof CommandFailure ? err.details ?? err.message : describeError(err),
        };
      }
      if (spec.async) this.onAsyncDone();
    })();
    const entry = { result, done, controller };
    this.history.push(entry);
    return entry;
  }

  /** Aborts whatever runs (agent shutdown). */
  abortAll(): void {
    for (const e of this.history) if (e.result.command_status === 'RUNNING') e.controller.abort();
  }
}
