import { describe, expect, it } from 'vitest';
import { evaluate, type VmIdentity } from './evaluate.js';
import type { PolicyRow, PortalName, Verdict } from './model.js';

const work: VmIdentity = { name: 'work', tags: ['dev', 'office'] };
const row = (subject: string, verdict: Verdict, arg?: string, portal: PortalName = 'FileChooser'): PolicyRow => ({ portal, subject, verdict, ...(arg ? { arg } : {}) });

describe('policy evaluation, case by case', () => {
  const cases: [string, PolicyRow[], string | undefined, Verdict, PolicyRow | undefined][] = [
    ['no rows: the user is asked', [], 'save', 'ask', undefined],
    ['@anyvm applies to every VM', [row('@anyvm', 'deny')], 'save', 'deny', row('@anyvm', 'deny')],
    ['a tag of the VM applies', [row('@tag:dev', 'deny')], 'open', 'deny', row('@tag:dev', 'deny')],
    ['a tag the VM lacks does not', [row('@tag:games', 'deny')], 'open', 'ask', undefined],
    ['another VM\'s row does not', [row('shop', 'deny')], 'open', 'ask', undefined],
    ['another portal\'s row does not', [row('work', 'deny', undefined, 'Usb')], 'open', 'ask', undefined],
    ['the VM\'s own row beats its tag\'s', [row('@tag:dev', 'deny'), row('work', 'allow')], 'open', 'allow', row('work', 'allow')],
    ['a tag\'s row beats @anyvm\'s', [row('@anyvm', 'allow'), row('@tag:office', 'deny')], 'open', 'deny', row('@tag:office', 'deny')],
    ['a row naming the argument beats one without', [row('work', 'deny'), row('work', 'allow', 'open')], 'open', 'allow', row('work', 'allow', 'open')],
    ['a row naming another argument does not apply', [row('work', 'deny', 'save')], 'open', 'ask', undefined],
    ['an argument row does not apply to a request without one', [row('work', 'deny', 'save')], undefined, 'ask', undefined],
    ['the subject outranks the argument', [row('@anyvm', 'deny', 'save'), row('work', 'allow')], 'save', 'allow', row('work', 'allow')],
    ['two tags that disagree: deny wins', [row('@tag:dev', 'allow'), row('@tag:office', 'deny')], 'open', 'deny', row('@tag:office', 'deny')],
    ['two tags, ask and allow: ask wins', [row('@tag:office', 'allow'), row('@tag:dev', 'ask')], 'open', 'ask', row('@tag:dev', 'ask')],
    ['an explicit allow for @anyvm is still an allow', [row('@anyvm', 'allow')], 'save', 'allow', row('@anyvm', 'allow')],
  ];
  for (const [name, rows, arg, verdict, winner] of cases) {
    it(name, () => {
      const d = evaluate(rows, 'FileChooser', arg, work);
      expect(d.verdict).toBe(verdict);
      expect(d.row).toEqual(winner);
    });
  }
});

/**
 * Every pair of rows over a small universe, against an oracle written as the
 * precedence list the README states rather than as the scores the code uses.
 */
describe('policy evaluation, every pair of rows', () => {
  const subjects = ['work', 'shop', '@tag:dev', '@tag:games', '@anyvm'];
  const args = [undefined, 'save', 'open'];
  const verdicts: Verdict[] = ['allow', 'deny', 'ask'];
  const universe = subjects.flatMap((s) => args.flatMap((a) => verdicts.map((v) => row(s, v, a))));
  const levels: [string, string | undefined][] = [
    ['work', 'arg'],
    ['work', undefined],
    ['@tag:dev', 'arg'],
    ['@tag:dev', undefined],
    ['@anyvm', 'arg'],
    ['@anyvm', undefined],
  ];
  const severity: Verdict[] = ['deny', 'ask', 'allow'];

  function oracle(rows: PolicyRow[], arg: string | undefined): Verdict {
    for (const [subject, argKind] of levels) {
      const here = rows.filter((r) => r.subject === subject && (argKind === 'arg' ? arg !== undefined && r.arg === arg : r.arg === undefined));
      if (here.length) return severity.find((v) => here.some((r) => r.verdict === v))!;
    }
    return 'ask';
  }

  for (const arg of [undefined, 'save']) {
    it(`agrees with the precedence list on all ${universe.length ** 2} pairs (request argument: ${arg ?? 'none'})`, () => {
      let checked = 0;
      for (const a of universe)
        for (const b of universe) {
          const got = evaluate([a, b], 'FileChooser', arg, { name: 'work', tags: ['dev'] });
          expect(got.verdict, `${JSON.stringify([a, b])}`).toBe(oracle([a, b], arg));
          if (got.row) expect([a, b]).toContainEqual(got.row);
          checked++;
        }
      expect(checked).toBe(universe.length ** 2);
    });
  }
});
