/**
 * The one reconnect schedule: try again after `minMs`, doubling up to
 * `maxMs`, back to `minMs` once a try succeeds. Used by every link that must
 * come back by itself (the guest's link to the host, the host's virtio-serial
 * connector, the VMM connection), so they all behave alike.
 *
 * No Node imports beyond timers: the guest runs this on Node 18.
 */
export class Backoff {
  private delay: number;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;

  constructor(
    private readonly minMs = 200,
    private readonly maxMs = 5000,
  ) {
    this.delay = minMs;
  }

  /** The delay the next `schedule` will wait. */
  get nextDelayMs(): number {
    return this.delay;
  }

  get pending(): boolean {
    return this.timer !== undefined;
  }

  /** Run `attempt` after the current delay, once (a pending try is not doubled), and lengthen the next. */
  schedule(attempt: () => void): void {
    if (this.stopped || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.stopped) attempt();
    }, this.delay);
    this.delay = Math.min(this.delay * 2, this.maxMs);
  }

  /** A try succeeded: the next failure starts from the shortest delay again. */
  reset(): void {
    this.delay = this.minMs;
  }

  /** No more tries. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
