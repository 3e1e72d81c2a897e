import { describe, expect, it } from 'vitest';
import { sanitizeGuestText } from '../../src/text.js';

describe('sanitizeGuestText', () => {
  it('removes controls, bidi overrides and zero-width characters', () => {
    expect(sanitizeGuestText('a\u0000b\u001b[31mc\u202ed\u200be\u2066f')).toBe('a b [31mc d e f');
  });
  it('caps length by characters, not UTF-16 units', () => {
    expect(sanitizeGuestText('😀'.repeat(10), 5)).toBe('😀😀😀😀…');
  });
});
