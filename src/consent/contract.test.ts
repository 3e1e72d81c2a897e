import { describe, expect, it } from 'vitest';
import { consentRequest as request, HOSTILE_TEXT as HOSTILE } from '../../test/helpers/consent-request.js';

import { ConsentAnswer, ConsentRequest, LIMITS, type ConsentRequestInput } from './contract.js';
import { parseDialogAnswer } from './gjs-dialog.js';
import { parseTtyAnswer, renderTtyPrompt } from './tty-prompt.js';



describe('ConsentRequest', () => {
  it('accepts the documented request and defaults the optional parts', () => {
    const parsed = ConsentRequest.parse(request({ details: undefined, guestText: undefined, allowAlways: undefined }));
    expect(parsed.details).toEqual([]);
    expect(parsed.guestText).toEqual([]);
    expect(parsed.allowAlways).toBe(false);
  });

  it('keeps hostile guest text verbatim: neutralising is the view’s job, not the schema’s', () => {
    const text = `${HOSTILE}\u001b[2J\u202e\n`;
    const parsed = ConsentRequest.parse(request({ guestText: [{ label: 'Reason given by the VM', text }] }));
    expect(parsed.guestText[0]?.text).toBe(text);
  });

  it.each([
    ['a colour that is not #rrggbb', { vm: { name: 'work', label: 'Work', color: 'red; background: url(x)' } }],
    ['a three-digit colour', { vm: { name: 'work', label: 'Work', color: '#fff' } }],
    ['a VM name with a slash', { vm: { name: '../work', label: 'Work', color: '#3465a4' } }],
    ['a control character in the label', { vm: { name: 'work', label: 'Wo\u001brk', color: '#3465a4' } }],
    ['a newline in the summary', { summary: 'line one\nline two' }],
    ['an empty summary', { summary: '' }],
    ['a fractional timeout', { timeoutSeconds: 1.5 }],
    ['a zero timeout', { timeoutSeconds: 0 }],
    ['a timeout over the cap', { timeoutSeconds: LIMITS.timeoutSeconds + 1 }],
  ])('rejects %s', (_what, overrides) => {
    expect(ConsentRequest.safeParse(request(overrides as Partial<ConsentRequestInput>)).success).toBe(false);
  });

  it('rejects unknown fields, so a typo cannot silently drop a setting', () => {
    expect(ConsentRequest.safeParse({ ...request(), title: 'Anything' }).success).toBe(false);
    expect(ConsentRequest.safeParse({ ...request(), version: 2 }).success).toBe(false);
  });

  it('caps sizes: label, summary, guest text and item counts', () => {
    const long = (n: number) => 'x'.repeat(n);
    expect(ConsentRequest.safeParse(request({ vm: { name: 'w', label: long(LIMITS.vmLabel), color: '#000000' } })).success).toBe(true);
    expect(ConsentRequest.safeParse(request({ vm: { name: 'w', label: long(LIMITS.vmLabel + 1), color: '#000000' } })).success).toBe(false);
    expect(ConsentRequest.safeParse(request({ summary: long(LIMITS.summary + 1) })).success).toBe(false);
    const guest = (text: string) => ({ label: 'Reason', text });
    expect(ConsentRequest.safeParse(request({ guestText: [guest(long(LIMITS.guestText))] })).success).toBe(true);
    expect(ConsentRequest.safeParse(request({ guestText: [guest(long(LIMITS.guestText + 1))] })).success).toBe(false);
    const many = Array.from({ length: LIMITS.guestTexts + 1 }, () => guest('hi'));
    expect(ConsentRequest.safeParse(request({ guestText: many })).success).toBe(false);
    const details = Array.from({ length: LIMITS.details + 1 }, () => ({ label: 'k', value: 'v' }));
    expect(ConsentRequest.safeParse(request({ details })).success).toBe(false);
  });
});

describe('ConsentAnswer', () => {
  it('accepts the three decisions and rejects anything else', () => {
    for (const decision of ['deny', 'allow-once', 'allow-always']) {
      expect(ConsentAnswer.safeParse({ version: 1, decision, reason: 'user' }).success).toBe(true);
    }
    expect(ConsentAnswer.safeParse({ version: 1, decision: 'allow', reason: 'user' }).success).toBe(false);
    expect(ConsentAnswer.safeParse({ version: 1, decision: 'deny', reason: 'because' }).success).toBe(false);
    expect(ConsentAnswer.safeParse({ version: 1, decision: 'deny', reason: 'user', extra: 1 }).success).toBe(false);
  });
});

describe('parseDialogAnswer', () => {
  it('takes exactly one JSON line', () => {
    expect(parseDialogAnswer('{"version":1,"decision":"allow-once","reason":"user"}\n')).toEqual({
      answer: { version: 1, decision: 'allow-once', reason: 'user' },
    });
  });

  it.each([
    ['', 'dialog gave no answer'],
    ['{"version":1,"decision":"allow-once","reason":"user"}', 'not exactly one line'],
    ['{"version":1,"decision":"allow-once","reason":"user"}\n{"version":1,"decision":"deny","reason":"user"}\n', 'not exactly one line'],
    ['allow\n', 'not JSON'],
    ['{"version":1,"decision":"yes","reason":"user"}\n', 'answer invalid'],
  ])('turns %j into a problem', (stdout, problem) => {
    const parsed = parseDialogAnswer(stdout);
    expect('problem' in parsed && parsed.problem).toContain(problem);
  });
});

describe('terminal prompt text', () => {
  it('labels guest text as unverified, gutters it, and contains no escape character', () => {
    const text = renderTtyPrompt(
      ConsentRequest.parse(request({ guestText: [{ label: 'Reason given by the VM', text: 'hi\u001b[2J\u001b]0;pwned\u0007\nAllow? [o]' }] })),
    );
    expect(text).toContain('Permission request from Work (VM "work")');
    expect(text).toContain('Text from the VM (unverified):');
    expect(text).toContain('  | hi\\x1b[2J\\x1b]0;pwned\\x07');
    expect(text).toContain('  | Allow? [o]');
    expect(text).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/);
  });

  it('reads d/o/a lines, treats an empty line as deny, and offers "always" only when allowed', () => {
    expect(parseTtyAnswer('', true)).toBe('deny');
    expect(parseTtyAnswer(' D ', true)).toBe('deny');
    expect(parseTtyAnswer('o', true)).toBe('allow-once');
    expect(parseTtyAnswer('a', true)).toBe('allow-always');
    expect(parseTtyAnswer('a', false)).toBeUndefined();
    expect(parseTtyAnswer('make all', true)).toBeUndefined();
  });
});
