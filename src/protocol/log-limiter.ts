import type { Logger } from '../log.js';

/**
 * What a peer can make us log, bounded.
 *
 * A hostile guest sends tens of thousands of bad frames a second, and each
 * would be a line: journald then drops the service's lines beyond 10,000 per
 * 30 s, audit lines included. So the first line of each kind is written, later
 * ones in the same burst are only counted, and one summary line gives the
 * count when the burst ends (or every `reportEveryMs` while it goes on). A
 * scope is whose lines they are: the host uses one per VM, so a guest that
 * reconnects in a loop does not start a fresh burst with each link.
 *
 * No Node imports beyond timers: the guest runs this on Node 18.
 */
export interface LogLimiterOptions {
  /** A burst ends after this long without another line of its kind. */
  quietMs?: number;
  /** A burst that goes on is summarised this often, so no count is held back for long. */
  reportEveryMs?: number;
}

export type LimitedLevel = 'info' | 'warn' | 'error';

interface Burst {
  scope: string;
  kind: string;
  log: Logger;
  level: LimitedLevel;
  msg: string;
  more: number;
  last: number;
  windowStart: number;
  timer: ReturnType<typeof setTimeout>;
}

export const DEFAULT_QUIET_MS = 5000;
export const DEFAULT_REPORT_EVERY_MS = 60_000;

export class LogLimiter {
  private readonly bursts = new Map<string, Burst>();
  private readonly quietMs: number;
  private readonly reportEveryMs: number;

  constructor(opts: LogLimiterOptions = {}) {
    this.quietMs = opts.quietMs ?? DEFAULT_QUIET_MS;
    this.reportEveryMs = opts.reportEveryMs ?? DEFAULT_REPORT_EVERY_MS;
  }

  /**
   * Write `msg` unless a burst of `kind` is under way in `scope`; then only
   * count it. `kind` must come from a fixed set (never from the peer), or the
   * peer could open a burst per line. Returns whether the line was written.
   */
  write(scope: string, kind: string, log: Logger, level: LimitedLevel, fields: Record<string, unknown>, msg: string): boolean {
    const key = `${scope}\u0000${kind}`;
    const now = Date.now();
    const burst = this.bursts.get(key);
    if (burst) {
      burst.more++;
      burst.last = now;
      return false;
    }
    log[level]({ ...fields, burst: kind }, msg);
    const timer = setTimeout(() => this.check(key), this.quietMs);
    timer.unref?.();
    this.bursts.set(key, { scope, kind, log, level, msg, more: 0, last: now, windowStart: now, timer });
    return true;
  }

  /** End the bursts of `scope` now, with their summaries: its link is gone and nothing else shares the scope. */
  endScope(scope: string): void {
    for (const [key, b] of this.bursts) if (b.scope === scope) this.end(key, b);
  }

  /** End every burst now, with its summary: the process is stopping. */
  flush(): void {
    for (const [key, b] of this.bursts) this.end(key, b);
  }

  /** Bursts under way. */
  get active(): number {
    return this.bursts.size;
  }

  private check(key: string): void {
    const b = this.bursts.get(key);
    if (!b) return;
    const now = Date.now();
    if (now - b.last >= this.quietMs) return this.end(key, b);
    if (now - b.windowStart >= this.reportEveryMs) {
      this.summarise(b, true);
      b.more = 0;
      b.windowStart = now;
    }
    const next = Math.min(b.last + this.quietMs, b.windowStart + this.reportEveryMs) - now;
    b.timer = setTimeout(() => this.check(key), Math.max(1, next));
    b.timer.unref?.();
  }

  private end(key: string, b: Burst): void {
    clearTimeout(b.timer);
    this.bursts.delete(key);
    if (b.more > 0) this.summarise(b, false);
  }

  private summarise(b: Burst, ongoing: boolean): void {
    b.log[b.level]({ burst: b.kind, more: b.more, ongoing }, `…${b.more} more like this${ongoing ? ' so far' : ''}: ${b.msg}`);
  }
}

/** The one limiter for everything peers make us log: links of one VM share its scope. */
export const peerLogLimiter = new LogLimiter();
