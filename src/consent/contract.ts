import { z } from 'zod';

/**
 * The consent dialog's wire contract: one JSON request on the dialog's stdin, one JSON line back.
 * The same schemas are bundled into the GJS dialog, so both ends validate against one definition.
 *
 * Everything except `guestText` is composed by the host from data it trusts, so it is held to a
 * narrow shape (a host bug should fail loudly, not render oddly). `guestText` is whatever the VM
 * sent: any characters are allowed and the views neutralise them, but sizes are capped so a guest
 * cannot grow the dialog or the terminal past the point where the buttons are visible.
 */

export const CONSENT_PROTOCOL_VERSION = 1;

/** Caps, exported so the views and tests agree with the schema. */
export const LIMITS = {
  vmName: 64,
  vmLabel: 64,
  summary: 300,
  details: 8,
  detailLabel: 40,
  detailValue: 300,
  guestTexts: 4,
  guestLabel: 60,
  guestText: 2000,
  timeoutSeconds: 600,
  /** Largest request the dialog reads from stdin, in bytes. */
  requestBytes: 64 * 1024,
} as const;

// C0, DEL and C1 controls. Host-composed strings never need them; newlines included, since every
// trusted field is rendered as a single line.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

const trustedLine = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .refine((s) => !CONTROL.test(s), 'must not contain control characters');

export const VmIdentity = z.strictObject({
  /** The VM's configured name: identity comes from the transport, never from the guest. */
  name: z
    .string()
    .min(1)
    .max(LIMITS.vmName)
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'VM names are letters, digits, "_", "." and "-"'),
  label: trustedLine(LIMITS.vmLabel),
  color: z.string().regex(/^#[0-9a-fA-F]{6}$/, 'colour must be #rrggbb'),
});
export type VmIdentity = z.infer<typeof VmIdentity>;

export const ConsentDetail = z.strictObject({
  label: trustedLine(LIMITS.detailLabel),
  value: z
    .string()
    .max(LIMITS.detailValue)
    .refine((s) => !CONTROL.test(s), 'must not contain control characters'),
});
export type ConsentDetail = z.infer<typeof ConsentDetail>;

export const GuestText = z.strictObject({
  /** Host-chosen caption, e.g. "Reason given by the VM". */
  label: trustedLine(LIMITS.guestLabel),
  /** Untrusted: shown only after neutralising, never as markup. */
  text: z.string().max(LIMITS.guestText),
});
export type GuestText = z.infer<typeof GuestText>;

export const ConsentRequest = z.strictObject({
  version: z.literal(CONSENT_PROTOCOL_VERSION),
  vm: VmIdentity,
  summary: trustedLine(LIMITS.summary),
  details: z.array(ConsentDetail).max(LIMITS.details).default([]),
  guestText: z.array(GuestText).max(LIMITS.guestTexts).default([]),
  timeoutSeconds: z.number().int().min(1).max(LIMITS.timeoutSeconds),
  allowAlways: z.boolean().default(false),
});
export type ConsentRequest = z.infer<typeof ConsentRequest>;
/** What callers build: the defaulted fields may be left out. */
export type ConsentRequestInput = z.input<typeof ConsentRequest>;

export const ConsentDecision = z.enum(['deny', 'allow-once', 'allow-always']);
export type ConsentDecision = z.infer<typeof ConsentDecision>;

export const ConsentAnswer = z.strictObject({
  version: z.literal(CONSENT_PROTOCOL_VERSION),
  decision: ConsentDecision,
  reason: z.enum(['user', 'timeout', 'closed']),
});
export type ConsentAnswer = z.infer<typeof ConsentAnswer>;

/**
 * What the host daemon gets back from any consent path (dialog, terminal, or none). Not a wire
 * message, so no schema: `reason` is free text for the audit log ("user", "timeout",
 * "cancelled", "dialog failed: …").
 */
export interface ConsentOutcome {
  decision: ConsentDecision;
  reason: string;
  via: 'gui' | 'tty' | 'none';
}

export function denied(reason: string, via: ConsentOutcome['via']): ConsentOutcome {
  return { decision: 'deny', reason, via };
}

export { describeIssues } from '../zod-issues.js';
