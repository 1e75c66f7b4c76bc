// A fixed pool of compression workers (one per core by default). Jobs go to whichever worker
// is free; callers keep their own order (the encoder awaits results in submission order).
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { CompressJob, CompressResult, WorkerConfig } from './protocol.js';

interface Pending { job: CompressJob; resolve: (r: CompressResult) => void; reject: (e: Error) => void }

export class CompressionPool {
  private readonly idle: Worker[] = [];
  private readonly queue: Pending[] = [];
  private readonly busy = new Map<Worker, Pending>();
  private nextId = 0;
  private failed: Error | undefined;

  constructor(config: WorkerConfig, size = availableParallelism()) {
    for (let i = 0; i < Math.max(1, size); i++) {
      const w = new Worker(new URL('./worker.js', import.meta.url), { workerData: config });
      w.on('message', (r: CompressResult) => this.done(w, r));
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => { if (code !== 0) this.fail(new Error(`compression worker exited with ${code}`)); });
      this.idle.push(w);
    }
  }

  /** Compresses `clusters` clusters of `data`; with `out`, the frames are written there too. */
  run(data: ArrayBuffer, clusters: number, out?: ArrayBuffer, known?: Uint16Array): Promise<CompressResult> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      const job: CompressJob = { id: this.nextId++, data, clusters, ...(out ? { out } : {}), ...(known ? { known } : {}) };
      this.queue.push({ job, resolve, reject });
      this.pump();
    });
  }

  async close(): Promise<void> {
    const all = [...this.idle, ...this.busy.keys()];
    this.idle.length = 0;
    await Promise.all(all.map((w) => w.terminate()));
  }

  private pump(): void {
    while (this.idle.length && this.queue.length) {
      const w = this.idle.pop()!;
      const p = this.queue.shift()!;
      this.busy.set(w, p);
      w.postMessage(p.job, [p.job.data, ...(p.job.out ? [p.job.out] : [])]);
    }
  }

  private done(w: Worker, r: CompressResult): void {
    const p = this.busy.get(w);
    this.busy.delete(w);
    this.idle.push(w);
    p?.resolve(r);
    this.pump();
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const p of [...this.busy.values(), ...this.queue]) p.reject(e);
    this.busy.clear();
    this.queue.length = 0;
  }
}
