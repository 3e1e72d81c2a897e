import { ANY_VM, TAG_PREFIX, type PolicyRow, type PortalName, type Verdict } from './model.js';

/**
 * Which row decides a request. Pure: the rows, the request and the VM in, the
 * winning row out, so every case fits in a table test.
 *
 * Specificity, strongest first:
 *   1. the subject: the VM by name, then one of its tags, then @anyvm;
 *   2. then the argument: a row naming the request's argument, then one without.
 * Rows that tie on both (two tags of one VM saying different things) resolve
 * to the most restrictive verdict, deny before ask before allow, so adding a
 * tag to a VM can never widen what a conflicting tag forbids.
 */
export interface VmIdentity {
  name: string;
  tags: readonly string[];
}

export interface Decision {
  verdict: Verdict;
  /** The row that decided; absent when no row applied and the default did. */
  row?: PolicyRow;
}

/** When no row applies, the user is asked (for FileChooser, the file dialog is that question). */
export const DEFAULT_VERDICT: Verdict = 'ask';

const RESTRICTIVENESS: Record<Verdict, number> = { deny: 3, ask: 2, allow: 1 };

/** 3 for the VM itself, 2 for one of its tags, 1 for @anyvm, 0 when the row is about someone else. */
export function subjectRank(subject: string, vm: VmIdentity): number {
  if (subject === vm.name) return 3;
  if (subject.startsWith(TAG_PREFIX)) return vm.tags.includes(subject.slice(TAG_PREFIX.length)) ? 2 : 0;
  return subject === ANY_VM ? 1 : 0;
}

/** 2 when the row names the request's argument, 1 when it names none, 0 when it names another. */
export function argumentRank(rowArg: string | undefined, arg: string | undefined): number {
  if (rowArg === undefined) return 1;
  return arg !== undefined && rowArg === arg ? 2 : 0;
}

export function winningRow(rows: readonly PolicyRow[], portal: PortalName, arg: string | undefined, vm: VmIdentity): PolicyRow | undefined {
  let best: { row: PolicyRow; score: number } | undefined;
  for (const row of rows) {
    if (row.portal !== portal) continue;
    const s = subjectRank(row.subject, vm);
    const a = argumentRank(row.arg, arg);
    if (s === 0 || a === 0) continue;
    const score = s * 10 + a;
    if (!best || score > best.score || (score === best.score && RESTRICTIVENESS[row.verdict] > RESTRICTIVENESS[best.row.verdict])) best = { row, score };
  }
  return best?.row;
}

export function evaluate(rows: readonly PolicyRow[], portal: PortalName, arg: string | undefined, vm: VmIdentity): Decision {
  const row = winningRow(rows, portal, arg, vm);
  return row ? { verdict: row.verdict, row } : { verdict: DEFAULT_VERDICT };
}
