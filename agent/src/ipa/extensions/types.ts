// An extension is a command namespace, as in ironic-python-agent: "service.get_service_steps"
// is command get_service_steps of extension service.
import type { CommandSpec } from '../command-runner.js';

export interface Extension {
  readonly name: string;
  readonly commands: Readonly<Record<string, CommandSpec>>;
}
