import { describe, expect, it } from 'vitest';
import { guestLogText, guestText, GuestFileName, MAX_COMBINING_MARKS, nameProblem, normaliseGuestPath } from './guest-input.js';

describe('guestText: what a host view may show of guest text', () => {
  it('shows terminal controls, bidi controls and separators as visible escapes', () => {
    expect(guestText('a\u001b[2Jb\u0007')).toBe('a\\x1b[2Jb\\x07');
    expect(guestText('\u009b31m')).toBe('\\x9b31m');
    expect(guestText('deny\u202eyolla')).toBe('deny\\u{202e}yolla');
    expect(guestText('a\u2028b\u2029c')).toBe('a\\u{2028}b\\u{2029}c');
  });

  it.each([
    ['U+061C arabic letter mark', '\u061c'],
    ['U+00AD soft hyphen', '\u00ad'],
    ['U+180E mongolian vowel separator', '\u180e'],
    ['U+115F hangul choseong filler', '\u115f'],
    ['U+3164 hangul filler', '\u3164'],
    ['U+2800 braille blank', '\u2800'],
    ['U+E0001 language tag', '\u{e0001}'],
    ['U+E0041 tag latin capital A', '\u{e0041}'],
    ['U+E007F cancel tag', '\u{e007f}'],
    ['U+200B zero width space', '\u200b'],
    ['U+2066 left-to-right isolate', '\u2066'],
    ['U+FEFF byte order mark', '\ufeff'],
  ])('never shows %s as it is', (_what, ch) => {
    const shown = guestText(`ok${ch}ok`);
    expect(shown).not.toContain(ch);
    expect(shown).toBe(`ok\\u{${ch.codePointAt(0)!.toString(16)}}ok`.replace(/\\u\{(..)\}/, '\\x$1'));
  });

  it('cuts runs of combining marks, keeping ordinary accents', () => {
    expect(guestText('e\u0301')).toBe('e\u0301');
    const zalgo = `Z${'\u0300\u0301\u0302\u0303\u0304\u0305'.repeat(20)}ok`;
    const shown = guestText(zalgo);
    expect([...shown].filter((c) => /\p{M}/u.test(c))).toHaveLength(MAX_COMBINING_MARKS);
    expect(shown.endsWith('ok')).toBe(true);
  });

  it('folds line breaks and runs of spaces on one line, and keeps newlines only when asked', () => {
    expect(guestText('a\r\nb\tc   d ')).toBe('a b c d');
    expect(guestText('a\r\nb', { multiline: true })).toBe('a\nb');
    expect(guestText('1\n2\n3\n4', { multiline: true, maxLines: 2 })).toBe('1\n2\n… (2 more lines not shown)');
  });

  it('caps by code points, not UTF-16 units, and replaces lone surrogates', () => {
    expect(guestText('😀'.repeat(10), { max: 5 })).toBe('😀😀😀😀…');
    expect(guestText('a\ud800b\udc00')).toBe('a\ufffdb\ufffd');
  });

  it('leaves markup alone (no view interprets it) and is idempotent', () => {
    const hostile = '<b>bold</b> &amp; <a href="x">';
    expect(guestText(hostile)).toBe(hostile);
    const once = guestText('x\u202e\u0007y');
    expect(guestText(once)).toBe(once);
  });

  it('guestLogText caps short and turns anything into a string', () => {
    expect(guestLogText('x'.repeat(1000)).length).toBeLessThanOrEqual(120);
    expect(guestLogText({ a: '\u202e' })).toBe('{"a":"\\u{202e}"}');
    expect(guestLogText(undefined)).toBe('');
  });
});

describe('file names from a guest are single path components', () => {
  it.each([
    ['', 'is empty'],
    ['../.bashrc', 'contains "/"'],
    ['a/b', 'contains "/"'],
    ['/etc/x', 'contains "/"'],
    ['..', 'is ".."'],
    ['.', 'is "."'],
    ['a\0b', 'contains a NUL byte'],
    ['é'.repeat(128), 'is longer than 255 bytes'],
  ])('refuses %j: it %s', (name, problem) => {
    expect(nameProblem(name)).toBe(problem);
    expect(GuestFileName.safeParse(name).success).toBe(false);
  });

  it.each(['ok.txt', '..hidden', '.bashrc', 'a b', 'x'.repeat(255), 'café ☕.txt'])('accepts %j', (name) => {
    expect(nameProblem(name)).toBeUndefined();
  });
});

describe('normaliseGuestPath', () => {
  it('resolves . and .. lexically and refuses relative, NUL and over-long paths', () => {
    expect(normaliseGuestPath('/run/xdp-vm/doc/../doc/./abc//x')).toBe('/run/xdp-vm/doc/abc/x');
    expect(normaliseGuestPath('/../../etc')).toBe('/etc');
    expect(normaliseGuestPath('etc/passwd')).toBeUndefined();
    expect(normaliseGuestPath('/a\0b')).toBeUndefined();
    expect(normaliseGuestPath(`/${'a'.repeat(4096)}`)).toBeUndefined();
  });
});
