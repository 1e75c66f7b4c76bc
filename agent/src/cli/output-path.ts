// The output must not be one of the inputs, nor replace anything but a regular file.
import { stat } from 'node:fs/promises';
import { UsageError } from '../errors.js';

/** UsageError if OUT exists and is not a regular file, or is one of INPUTS (SAME: what to say then). */
export async function checkOutputPath(out: string, inputs: readonly string[], same: string): Promise<void> {
  const o = await stat(out).catch(() => undefined);
  if (!o) return;
  for (const p of inputs) {
    const s = await stat(p).catch(() => undefined);
    if (s && s.dev === o.dev && s.ino === o.ino) throw new UsageError(`output ${out} is ${same}`);
  }
  if (!o.isFile()) throw new UsageError(`output ${out} exists and is not a regular file`);
}
