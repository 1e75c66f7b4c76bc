// Heartbeats to Ironic: at once, then every heartbeat_timeout x U(0.3, 0.6) (as
// ironic-python-agent does), 5-10 s after a failure, and immediately (at most every 5 s) when
// an asynchronous command finishes - that is what moves the conductor to the next step.
import type { Logger } from 'pino';

export class Heartbeater {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private lastBeat = 0;
  private inFlight: Promise<void> | undefined;
  private beats = 0;

  constructor(
    private readonly beat: () => Promise<void>,
    private readonly timeoutSeconds: () => number,
    private readonly log?: Logger,
  ) {}

  start(): void { this.schedule(0); }

  /** Heartbeat now (or as soon as 5 s have passed since the last one). */
  force(): void {
    const wait = Math.max(0, 5000 - (Date.now() - this.lastBeat));
    this.schedule(wait);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private async tick(): Promise<void> {
    if (this.inFlight) return;
    this.lastBeat = Date.now();
    this.inFlight = this.beat();
    try {
      await this.inFlight;
      // The first one is the moment the conductor knows the ramdisk is up: worth a log line.
      if (this.beats++ === 0) this.log?.info('first heartbeat accepted by Ironic');
      const t = this.timeoutSeconds();
      this.schedule(t * 1000 * (0.3 + Math.random() * 0.3));
    } catch (err) {
      this.log?.warn({ error: (err as Error).message }, 'heartbeat failed; retrying');
      this.schedule(5000 + Math.random() * 5000);
    } finally {
      this.inFlight = undefined;
    }
  }
}
