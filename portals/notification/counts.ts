import type { AuditEntry } from '../../src/host/audit.js';
import type { NotificationKind } from './schema.js';

/**
 * The audit trail of one VM's notifications, as counts, never contents: a
 * line per notification would drown every other decision. So:
 *
 * - the first notification shown is audited at once (the user learns that
 *   this VM notifies at all);
 * - after that, one line per period with how many were shown, by kind, if
 *   any were;
 * - every policy deny is audited (the rate limit runs first, so a guest
 *   cannot make these more than about one a second);
 * - rate-limit refusals come in bursts, audited like the daemon's flood
 *   gate (src/host/flood.ts): once when a burst starts and once, with the
 *   count, when it ends: after `quietMs` without a refusal, or at the end
 *   of the period. A guest that floods without pause is let through a
 *   trickle by the rate limit; those do not end its burst, or a sustained
 *   flood would write two lines a second.
 */
export const PORTAL = 'Notification';
export const DEFAULT_PERIOD_MS = 10 * 60_000;
export const DEFAULT_QUIET_MS = 5000;

export interface CountsOptions {
  vm: string;
  audit: (entry: AuditEntry) => void;
  now?: () => number;
  quietMs?: number;
}

export class NotificationAudit {
  private first = true;
  private shown: Record<NotificationKind, number> = { libnotify: 0, portal: 0 };
  private since: number;
  private burst: { request: string; refused: number; quiet: NodeJS.Timeout } | undefined;
  private readonly now: () => number;

  constructor(private readonly opts: CountsOptions) {
    this.now = opts.now ?? Date.now;
    this.since = this.now();
  }

  allowed(kind: NotificationKind, request: string): void {
    if (this.first) {
      this.first = false;
      this.line({ request, decision: 'allow', reason: 'policy', asked: { kind, first: true } });
      this.since = this.now();
      return;
    }
    this.shown[kind]++;
  }

  denied(kind: NotificationKind, request: string, rule: string | undefined, error?: string): void {
    this.line({ request, decision: 'deny', reason: error ? 'failure' : 'policy', asked: { kind }, ...(rule ? { rule } : {}) });
  }

  /** The host's server failed to show one (not a decision about the guest, but the user did not see it). */
  failed(kind: NotificationKind, request: string): void {
    this.line({ request, decision: 'error', reason: 'failure', asked: { kind } });
  }

  limited(kind: NotificationKind, request: () => string, limits: { burst: number; perSecond: number }): void {
    if (this.burst) {
      this.burst.refused++;
      this.burst.quiet.refresh();
      return;
    }
    const quiet = setTimeout(() => this.endBurst(), this.opts.quietMs ?? DEFAULT_QUIET_MS);
    quiet.unref();
    this.burst = { request: request(), refused: 1, quiet };
    this.line({ request: this.burst.request, decision: 'deny', reason: 'flood', asked: { kind, ...limits }, flood: { phase: 'start', refused: 1 } });
  }

  /** The period's counts, if anything happened in it; the daemon calls this on a timer. */
  flush(): void {
    this.endBurst();
    const total = this.shown.libnotify + this.shown.portal;
    if (total > 0) {
      this.line({ request: 'notification counts', decision: 'allow', reason: 'policy', asked: { shown: total, ...this.shown, seconds: Math.round((this.now() - this.since) / 1000) } });
    }
    this.shown = { libnotify: 0, portal: 0 };
    this.since = this.now();
  }

  private endBurst(): void {
    const b = this.burst;
    if (!b) return;
    clearTimeout(b.quiet);
    this.burst = undefined;
    this.line({ request: b.request, decision: 'deny', reason: 'flood', flood: { phase: 'end', refused: b.refused } });
  }

  private line(e: Omit<AuditEntry, 'vm' | 'portal' | 'grant'>): void {
    this.opts.audit({ vm: this.opts.vm, portal: PORTAL, grant: null, ...e });
  }
}
