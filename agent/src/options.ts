// Checks of user-given option values (command-line flags and library options alike): each
// throws a UsageError naming the option and the value it got.
import { UsageError } from './errors.js';

export function choice<T extends string>(v: string, allowed: readonly T[], flag: string): T {
  if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`${flag} must be one of ${allowed.join(', ')} (got "${v}")`);
  return v as T;
}

export function integer(v: string | number, flag: string, [min, max]: [number, number]): number {
  const n = Number(v);
  if (v === '' || !Number.isInteger(n) || n < min || n > max) throw new UsageError(`${flag} must be an integer from ${min} to ${max} (got "${v}")`);
  return n;
}

/** ["K=V", ...] (repeated --property / --root-device) as an object; V may contain "=". */
export function keyValues(list: string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of list) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new UsageError(`${flag} wants KEY=VALUE (got "${kv}")`);
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

/** Node's parseArgs with its errors as one-line UsageErrors. */
export function oneLine<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new UsageError((err as Error).message.split('\n')[0]!);
  }
}
