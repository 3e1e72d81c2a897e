import type { VmConfig } from '../config/schema.js';
import { askConsent, type AskConsentOptions, type ConsentMode } from '../consent/ask.js';
import type { ConsentDetail, GuestText } from '../consent/contract.js';
import type { Logger } from '../log.js';
import type { PolicyDecider } from '../policy/policy.js';
import { checkArgument, describeRow, type PolicyRow, type PortalName } from '../policy/model.js';
import { audit, type AuditReason } from './audit.js';

/**
 * One consent decision, the way device and network portals make it: the
 * policy first; on "ask", the host-drawn dialog (or the terminal); "Always
 * allow" writes the VM's row to the permission store; every outcome is one
 * audit line. The question's words and the VM's name and colour come from the
 * host; only `guestText` comes from the guest, and the dialog escapes and
 * labels it.
 */
export interface ConsentQuestion {
  vm: VmConfig;
  portal: PortalName;
  /** The policy argument, e.g. usb:1050/0407/CC12345. */
  arg?: string;
  requestId: string;
  summary: string;
  details?: ConsentDetail[];
  guestText?: GuestText[];
  timeoutSeconds?: number;
}

export interface ConsentDeps {
  policy: PolicyDecider;
  /** Where "Always allow" is remembered: the permission store. */
  remember: (row: PolicyRow) => Promise<void>;
  mode: ConsentMode;
  log: Logger;
  signal?: AbortSignal;
  /** Passed to askConsent (display environment, dialog location). */
  ask?: Omit<AskConsentOptions, 'mode' | 'signal' | 'logger'>;
}

export interface ConsentResult {
  allowed: boolean;
  reason: AuditReason;
}

/** What a portal's host half calls: the daemon binds the policy, the store and the dialog mode. */
export type ConsentAsker = (q: ConsentQuestion, signal?: AbortSignal) => Promise<ConsentResult>;

const AUDIT_REASON: Record<string, AuditReason> = { user: 'user', timeout: 'timeout', closed: 'closed', cancelled: 'closed' };

export async function requestConsent(q: ConsentQuestion, deps: ConsentDeps): Promise<ConsentResult> {
  const entry = { vm: q.vm.name, portal: q.portal, request: q.requestId, grant: null, asked: { summary: q.summary, ...(q.arg ? { arg: q.arg } : {}) } };
  const policy = await deps.policy.decision(q.portal, q.arg, { name: q.vm.name, tags: q.vm.tags });
  if (policy.verdict !== 'ask') {
    const allowed = policy.verdict === 'allow';
    audit({ ...entry, decision: allowed ? 'allow' : 'deny', reason: policy.error ? 'failure' : 'policy', ...(policy.row ? { rule: describeRow(policy.row) } : {}) });
    return { allowed, reason: 'policy' };
  }
  const outcome = await askConsent(
    {
      version: 1,
      vm: { name: q.vm.name, label: q.vm.label, color: q.vm.color },
      summary: q.summary,
      details: q.details ?? [],
      guestText: q.guestText ?? [],
      timeoutSeconds: q.timeoutSeconds ?? 60,
      allowAlways: true,
    },
    { ...deps.ask, mode: deps.mode, signal: deps.signal, logger: deps.log },
  );
  const reason = AUDIT_REASON[outcome.reason] ?? 'failure';
  if (outcome.decision === 'deny') {
    audit({ ...entry, decision: 'deny', reason, asked: { ...entry.asked, via: outcome.via, why: outcome.reason } });
    return { allowed: false, reason };
  }
  if (outcome.decision === 'allow-always') {
    const arg = q.arg === undefined ? undefined : checkArgument(q.portal, q.arg);
    const row: PolicyRow = { portal: q.portal, subject: q.vm.name, verdict: 'allow', ...(arg?.ok ? { arg: arg.arg } : {}) };
    await deps.remember(row).catch((err: Error) => deps.log.error({ err: err.message }, 'could not remember "Always allow"; it applies to this request only'));
  }
  audit({ ...entry, decision: 'allow', reason: 'user', asked: { ...entry.asked, via: outcome.via, always: outcome.decision === 'allow-always' } });
  return { allowed: true, reason: 'user' };
}
