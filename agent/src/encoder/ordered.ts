// Runs `start` on items with a bounded number in flight and hands the results to `consume`
// strictly in input order: read-ahead and parallel compression without unbounded memory.
import { AbortedError } from '../errors.js';

export async function pipelineInOrder<I, R>(
  items: Iterable<I>,
  inFlight: number,
  start: (item: I) => Promise<R>,
  consume: (result: R, item: I) => Promise<void> | void,
  signal?: AbortSignal,
): Promise<void> {
  const queue: { item: I; result: Promise<R> }[] = [];
  const drainOne = async () => {
    const head = queue.shift()!;
    await consume(await head.result, head.item);
  };
  try {
    for (const item of items) {
      if (signal?.aborted) throw new AbortedError();
      const result = start(item);
      result.catch(() => {}); // surfaced in order by drainOne; avoid unhandled rejections meanwhile
      queue.push({ item, result });
      if (queue.length >= inFlight) await drainOne();
    }
    while (queue.length) await drainOne();
  } finally {
    // On failure let the stragglers settle so nothing keeps running behind our back.
    await Promise.allSettled(queue.map((q) => q.result));
  }
}
