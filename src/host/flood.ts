import { FloodLimits } from '../config/schema.js';
import type { AnyHandler } from '../protocol/connection.js';
import { audit, type AuditEntry } from './audit.js';

/**
 * Flood control, per VM: a VM with too many requests pending, or too many
 * admitted within the sliding window, gets response 2 at once and no dialog.
 * Other VMs have their own counts and are never slowed down.
 *
 * Refusals come in bursts, and a burst is audited twice: once when it starts
 * and once, with the count, when it ends; never once per request, so a guest
 * cannot flood the log either. A burst ends at the VM's next admitted
 * request, or after `quietMs` without a refusal.
 *
 * Only admitted requests count toward the window: a flooding guest still gets
 * its fair share of dialogs once the window slides, rather than being locked
 * out for as long as it keeps trying.
 */

/** What every portal method answers when refused: impl.portal's "other" response. */
export const REFUSED = { response: 2, results: {} } as const;

export const DEFAULT_FLOOD_LIMITS: FloodLimits = FloodLimits.parse({});

export interface FloodOptions {
  limits?: Partial<FloodLimits>;
  /** How long without a refusal ends a burst. */
  quietMs?: number;
  now?: () => number;
  audit?: (entry: AuditEntry) => void;
}

interface Burst {
  portal: string;
  request: string;
  refused: number;
  timer: NodeJS.Timeout;
}

interface VmState {
  pending: number;
  /** Admission times within the window, oldest first. */
  recent: number[];
  burst?: Burst;
}

/** An admitted request; call `done` once when it is answered. */
export interface Admission {
  done(): void;
}

export class FloodControl {
  readonly limits: FloodLimits;
  private readonly vms = new Map<string, VmState>();
  private readonly quietMs: number;
  private readonly now: () => number;
  private readonly audit: (entry: AuditEntry) => void;

  constructor(opts: FloodOptions = {}) {
    this.limits = { ...DEFAULT_FLOOD_LIMITS, ...opts.limits };
    this.quietMs = opts.quietMs ?? 5000;
    this.now = opts.now ?? Date.now;
    this.audit = opts.audit ?? audit;
  }

  /**
   * Admit one request of `vm`, or refuse it (undefined). `requestId` is called
   * only for the line that starts a burst.
   */
  admit(vm: string, portal: string, requestId: () => string): Admission | undefined {
    const s = this.state(vm);
    const now = this.now();
    const horizon = now - this.limits.windowSeconds * 1000;
    while (s.recent.length && s.recent[0]! <= horizon) s.recent.shift();
    if (s.pending >= this.limits.maxPending || s.recent.length >= this.limits.maxRecent) {
      this.refuse(vm, s, portal, requestId);
      return undefined;
    }
    if (s.burst) this.endBurst(vm, s);
    s.pending++;
    s.recent.push(now);
    let open = true;
    return {
      done: () => {
        if (open) s.pending--;
        open = false;
      },
    };
  }

  /** `handler` behind `vm`'s gate: refused requests get REFUSED without running it. */
  guard(vm: string, portal: string, handler: AnyHandler, requestId: () => string): AnyHandler {
    return async (params, ctx) => {
      const admission = this.admit(vm, portal, requestId);
      if (!admission) return REFUSED;
      try {
        return await handler(params, ctx);
      } finally {
        admission.done();
      }
    };
  }

  /** How many requests of `vm` are being answered now. */
  pending(vm: string): number {
    return this.vms.get(vm)?.pending ?? 0;
  }

  /** End every open burst, writing its summary: the daemon is stopping. */
  close(): void {
    for (const [vm, s] of this.vms) if (s.burst) this.endBurst(vm, s);
  }

  private state(vm: string): VmState {
    let s = this.vms.get(vm);
    if (!s) this.vms.set(vm, (s = { pending: 0, recent: [] }));
    return s;
  }

  private refuse(vm: string, s: VmState, portal: string, requestId: () => string): void {
    if (s.burst) {
      s.burst.refused++;
      s.burst.timer.refresh();
      return;
    }
    const request = requestId();
    const timer = setTimeout(() => this.endBurst(vm, s), this.quietMs);
    timer.unref();
    s.burst = { portal, request, refused: 1, timer };
    this.audit({
      vm,
      portal,
      request,
      decision: 'deny',
      reason: 'flood',
      grant: null,
      asked: { pending: s.pending, recent: s.recent.length, ...this.limits },
      flood: { phase: 'start', refused: 1 },
    });
  }

  private endBurst(vm: string, s: VmState): void {
    const b = s.burst;
    if (!b) return;
    clearTimeout(b.timer);
    s.burst = undefined;
    this.audit({ vm, portal: b.portal, request: b.request, decision: 'deny', reason: 'flood', grant: null, flood: { phase: 'end', refused: b.refused } });
  }
}
