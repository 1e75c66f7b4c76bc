// `bmsnap delete IMAGE`: deletes a snapshot from Glance with its cluster index image, refusing
// while deltas need it, and lifting the protection of its parent once the parent's last delta
// is gone (incremental/parent-guard.ts).
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';
import { oneLine } from '../options.js';
import { createLogger } from '../log.js';
import { GLANCE_OPTIONS, GLANCE_USAGE, glanceConnection } from './glance-options.js';

export const DELETE_USAGE = `usage: bmsnap delete IMAGE [glance options]

Deletes Glance image IMAGE and its hidden cluster index image. Refused while deltas are
taken against IMAGE (delete or flatten them first); once a parent's last delta is deleted,
the protection bmsnap put on the parent is lifted.

${GLANCE_USAGE.split('\n').filter((l) => !/--glance NAME|--visibility|--property/.test(l)).join('\n')}`;

export async function deleteCommand(argv: string[], _signal: AbortSignal): Promise<void> {
  const { values, positionals } = oneLine(() => parseArgs({
    args: argv, allowPositionals: true,
    options: { ...GLANCE_OPTIONS, quiet: { type: 'boolean', short: 'q' }, help: { type: 'boolean', short: 'h' } },
  }));
  if (values.help) { process.stdout.write(DELETE_USAGE + '\n'); return; }
  if (positionals.length !== 1) throw new UsageError('delete takes one Glance image id');
  const log = createLogger({ human: process.stderr.isTTY === true, level: values.quiet ? 'warn' : 'info' });
  const [{ GlanceClient }, { deleteSnapshot }] = await Promise.all([import('../glance/client.js'), import('../incremental/parent-guard.js')]);
  const client = new GlanceClient(await glanceConnection(values));
  try {
    const deleted = await deleteSnapshot(client, positionals[0]!, log);
    if (!values.quiet) process.stderr.write(`bmsnap: deleted ${deleted.join(' and ')}\n`);
  } finally {
    await client.close();
  }
}
