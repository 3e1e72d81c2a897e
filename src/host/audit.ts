import { childLogger, type Logger } from '../log.js';

/**
 * The audit trail: one line of fixed shape for every decision, grant and
 * revoke, so `xdp-vm log` and a reader of the journal see the same facts.
 */
export type AuditDecision = 'allow' | 'deny' | 'cancel' | 'error' | 'revoke';
export type AuditReason = 'user' | 'policy' | 'timeout' | 'flood' | 'closed' | 'link-lost' | 'cli' | 'failure';

export interface AuditEntry {
  vm: string;
  portal: string;
  /** A daemon-unique request id, or the CLI action for revokes. */
  request: string;
  decision: AuditDecision;
  reason: AuditReason;
  grant: string[] | null;
  /** What was asked, in the portal's own terms (kind, title, paths). */
  asked?: Record<string, unknown>;
}

let logger: Logger | undefined;

export function audit(entry: AuditEntry): void {
  logger ??= childLogger({ component: 'audit' });
  logger.info({ audit: true, ...entry, grant: entry.grant }, `audit: ${entry.vm} ${entry.portal} ${entry.decision} (${entry.reason})`);
}
