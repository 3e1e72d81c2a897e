import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { z } from 'zod';
import { childLogger, type Logger } from '../log.js';
import { stateHome } from '../paths.js';

/**
 * The audit trail: one line of fixed shape for every decision, grant and
 * revoke, so `xdp-vm log` and a reader of the journal see the same facts.
 *
 * Every line goes to stderr through the root logger. Under systemd that is
 * all: the journal captures a service's stderr line by line, so each audit
 * line becomes one journal entry whose MESSAGE is the JSON. Anywhere else the
 * same line is also appended to $XDG_STATE_HOME/xdp-vm/audit.jsonl, which
 * `xdp-vm log` reads.
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
  /** With reason "policy": the row that decided, as "PORTAL ARG SUBJECT VERDICT". */
  rule?: string;
  /** With reason "flood": the first line of a burst, or its summary. */
  flood?: { phase: 'start' | 'end'; refused: number };
}

export const AUDIT_DECISIONS = ['allow', 'deny', 'cancel', 'error', 'revoke'] as const;
export const AUDIT_REASONS = ['user', 'policy', 'timeout', 'flood', 'closed', 'link-lost', 'cli', 'failure'] as const;

/** An audit line as read back from the file or the journal; pino's own keys ride along. */
export const AuditLine = z.looseObject({
  audit: z.literal(true),
  time: z.string(),
  vm: z.string(),
  portal: z.string(),
  request: z.string(),
  decision: z.enum(AUDIT_DECISIONS),
  reason: z.enum(AUDIT_REASONS),
  grant: z.array(z.string()).nullable(),
  asked: z.record(z.string(), z.unknown()).optional(),
  rule: z.string().optional(),
  flood: z.object({ phase: z.enum(['start', 'end']), refused: z.number() }).optional(),
});
export type AuditLine = z.infer<typeof AuditLine>;

/** systemd sets these for a service; with them, stderr is the journal. */
export function underSystemd(env: NodeJS.ProcessEnv = process.env): boolean {
  return !!(env.JOURNAL_STREAM || env.INVOCATION_ID);
}

export function auditFilePath(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(env.XDG_STATE_HOME || stateHome(), 'xdp-vm', 'audit.jsonl');
}

interface Sinks {
  stderr: Logger;
  file: Logger | undefined;
}

let sinks: Sinks | undefined;

function openFile(file: string): Logger | undefined {
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const dest = pino.destination({ dest: file, append: true, sync: true, mode: 0o600 });
    return pino({ name: 'xdp-vm', base: { pid: process.pid, component: 'audit' }, timestamp: pino.stdTimeFunctions.isoTime }, dest);
  } catch (err) {
    childLogger({ component: 'audit' }).warn(`cannot write the audit file ${file}: ${(err as Error).message}; audit lines go to stderr only`);
    return undefined;
  }
}

/**
 * Where audit lines go. Defaults come from the environment on first use;
 * tests pass a logger they read and a file of their own (null for none).
 */
export function configureAudit(opts: { logger?: Logger; file?: string | null } = {}): void {
  const file = opts.file === undefined ? (underSystemd() ? null : auditFilePath()) : opts.file;
  sinks = { stderr: opts.logger ?? childLogger({ component: 'audit' }), file: file ? openFile(file) : undefined };
}

export function audit(entry: AuditEntry): void {
  if (!sinks) configureAudit();
  const line: Record<string, unknown> = {
    audit: true,
    vm: entry.vm,
    portal: entry.portal,
    request: entry.request,
    decision: entry.decision,
    reason: entry.reason,
    grant: entry.grant,
  };
  if (entry.asked) line.asked = entry.asked;
  if (entry.rule) line.rule = entry.rule;
  if (entry.flood) line.flood = entry.flood;
  const msg = `audit: ${entry.vm} ${entry.portal} ${entry.decision} (${entry.reason})`;
  sinks!.stderr.info(line, msg);
  sinks!.file?.info(line, msg);
}

/** The audit lines in `text` (a file's or journal MESSAGEs' JSON lines); anything else is skipped. */
export function parseAuditLines(lines: Iterable<string>): AuditLine[] {
  const out: AuditLine[] = [];
  for (const l of lines) {
    if (!l.startsWith('{')) continue;
    let raw: unknown;
    try {
      raw = JSON.parse(l);
    } catch {
      continue;
    }
    const parsed = AuditLine.safeParse(raw);
    if (parsed.success) out.push(parsed.data);
  }
  return out;
}
