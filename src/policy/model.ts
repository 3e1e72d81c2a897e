import { z } from 'zod';
import { PORTAL_NAMES, portalByName, type PortalName as Name } from '../../portals/index.js';
import { VmName } from '../config/schema.js';

/**
 * The policy model, Qubes-style: (portal, argument, subject, verdict) rows,
 * and how each row is spelled in the permission store so that
 * `flatpak permission-show` and `permission-set` read and write the same
 * rows we do (src/policy/README.md has the id scheme).
 */
export { PORTAL_NAMES };
export const PortalName = z.enum(PORTAL_NAMES);
export type PortalName = Name;

export const VERDICTS = ['allow', 'deny', 'ask'] as const;
export const Verdict = z.enum(VERDICTS);
export type Verdict = z.infer<typeof Verdict>;

export const ANY_VM = '@anyvm';
export const TAG_PREFIX = '@tag:';

const TagName = z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'a tag is lowercase letters, digits and "-", starting with a letter');

/** Who a row is about: one VM by name, every VM with a tag, or every VM. */
export const Subject = z.union([
  VmName,
  z.literal(ANY_VM),
  z
    .string()
    .startsWith(TAG_PREFIX)
    .refine((s) => TagName.safeParse(s.slice(TAG_PREFIX.length)).success, 'after "@tag:" comes a tag: lowercase letters, digits and "-", starting with a letter'),
]);
export type Subject = z.infer<typeof Subject>;

export const PolicyRow = z
  .object({
    portal: PortalName,
    /** Absent: the row applies whatever the argument. */
    arg: z.string().optional(),
    subject: Subject,
    verdict: Verdict,
  })
  .strict();
export type PolicyRow = z.infer<typeof PolicyRow>;

/** Validate a row's argument for its portal; returns the normalised argument or the problem. */
export function checkArgument(portal: PortalName, arg: string): { ok: true; arg: string } | { ok: false; problem: string } {
  const { policy } = portalByName(portal);
  const parsed = policy.argument.safeParse(arg);
  if (parsed.success) return { ok: true, arg: parsed.data };
  return { ok: false, problem: `"${arg}" is not an argument of ${portal}: expected ${policy.describeArgument}` };
}

// ── The store encoding ────────────────────────────────────────────────────

export const TABLE_PREFIX = 'xdp-vm-';
/** The permission store id of a row without an argument. */
export const ANY_ARGUMENT_ID = '*';

export function tableOf(portal: PortalName): string {
  return `${TABLE_PREFIX}${portal.toLowerCase()}`;
}

export function portalOfTable(table: string): PortalName | undefined {
  return PORTAL_NAMES.find((p) => tableOf(p) === table);
}

/** The permission store's tri-state, as xdg-desktop-portal spells it for its own tables. */
const TO_STORE: Record<Verdict, string> = { allow: 'yes', deny: 'no', ask: 'ask' };

export function verdictToStore(v: Verdict): string[] {
  return [TO_STORE[v]];
}

export const StoreValue = z.tuple([z.enum(['yes', 'no', 'ask'])]);
export type StoreValue = z.infer<typeof StoreValue>;

export function verdictFromStore(value: StoreValue): Verdict {
  return value[0] === 'yes' ? 'allow' : value[0] === 'no' ? 'deny' : 'ask';
}

export function idOf(row: Pick<PolicyRow, 'arg'>): string {
  return row.arg ?? ANY_ARGUMENT_ID;
}

/** A store entry that is not a row of ours: another tool wrote something we cannot read. */
export interface InvalidEntry {
  table: string;
  id: string;
  app: string;
  value: unknown;
  problem: string;
}

/**
 * One (table, id, app, value) entry of the store as a row, or why it is not
 * one. An empty value is what `flatpak permission-set TABLE ID APP` leaves
 * and what `permission-reset` leaves: no row, and nothing wrong.
 */
export function rowFromStore(portal: PortalName, id: string, app: string, value: unknown): PolicyRow | InvalidEntry | undefined {
  const table = tableOf(portal);
  if (Array.isArray(value) && value.length === 0) return undefined;
  const subject = Subject.safeParse(app);
  if (!subject.success) return { table, id, app, value, problem: `"${app}" is not a VM name, @tag:TAG or @anyvm` };
  const stored = StoreValue.safeParse(value);
  if (!stored.success) return { table, id, app, value, problem: `the value must be exactly one of "yes", "no" or "ask"` };
  let arg: string | undefined;
  if (id !== ANY_ARGUMENT_ID) {
    const checked = checkArgument(portal, id);
    if (!checked.ok) return { table, id, app, value, problem: checked.problem };
    if (checked.arg !== id) return { table, id, app, value, problem: `"${id}" is not in canonical form; use "${checked.arg}"` };
    arg = id;
  }
  return { portal, subject: subject.data, verdict: verdictFromStore(stored.data), ...(arg === undefined ? {} : { arg }) };
}

export function isInvalid(x: PolicyRow | InvalidEntry): x is InvalidEntry {
  return 'problem' in x;
}

/** How a row reads in a log line or an error: "FileChooser save @tag:work deny". */
export function describeRow(row: PolicyRow): string {
  return `${row.portal} ${row.arg ?? '*'} ${row.subject} ${row.verdict}`;
}
