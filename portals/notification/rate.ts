/**
 * A token bucket: `burst` notifications at once, then `perSecond` more each
 * second. A guest that notifies now and then never meets it; one that
 * floods gets its first `burst` through and then a steady trickle, never a
 * lock-out for as long as it keeps trying. Pure, with an injectable clock.
 */
export interface RateOptions {
  burst: number;
  perSecond: number;
  now?: () => number;
}

export const DEFAULT_RATE = { burst: 10, perSecond: 1 } as const;

export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly now: () => number;

  constructor(readonly opts: RateOptions) {
    this.now = opts.now ?? Date.now;
    this.tokens = opts.burst;
    this.last = this.now();
  }

  /** Take one token if there is one. */
  take(): boolean {
    const now = this.now();
    this.tokens = Math.min(this.opts.burst, this.tokens + (Math.max(0, now - this.last) / 1000) * this.opts.perSecond);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
