// Compressed frames kept from a stream's sizing pass for its writing pass, up to a byte budget.
// Frames are packed into large slabs: a few big allocations instead of one per batch keeps the
// copy cheap (no per-buffer page faults or GC pressure from thousands of external buffers).
// A slab is freed by the GC once the writing pass has taken every frame in it.
const SLAB = 32 * 1024 * 1024;

export class FrameCache {
  private readonly entries = new Map<number, Buffer>();
  private slab: Buffer | undefined;
  private used = 0;
  private room: number;

  constructor(budget: number) { this.room = Math.max(0, budget); }

  get accepting(): boolean { return this.room > 0; }

  /** Copies `frames` in under `key`; false (and nothing kept) once the budget is spent. */
  keep(key: number, frames: Buffer): boolean {
    if (frames.length > this.room) { this.room = 0; return false; }
    if (!this.slab || this.used + frames.length > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(Math.min(Math.max(SLAB, frames.length), this.room));
      this.used = 0;
    }
    const view = this.slab.subarray(this.used, this.used + frames.length);
    frames.copy(view);
    this.used += frames.length;
    this.room -= frames.length;
    this.entries.set(key, view);
    return true;
  }

  /** The frames kept under `key`, removed from the cache (each is sent once). */
  take(key: number): Buffer | undefined {
    const v = this.entries.get(key);
    if (v) this.entries.delete(key);
    return v;
  }
}
