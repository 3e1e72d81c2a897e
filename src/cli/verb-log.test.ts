import { describe, expect, it } from 'vitest';
import type { AuditLine } from '../host/audit.js';
import { UsageError } from './common.js';
import { formatLine, parseSince } from './verb-log.js';

const now = new Date(2025, 5, 15, 14, 30, 0); // local time, 15 June 2025 14:30

describe('--since', () => {
  const relative: [string, number][] = [
    ['30s', 30_000],
    ['10m', 600_000],
    ['2h', 7_200_000],
    ['1d', 86_400_000],
    ['1w', 604_800_000],
    [' 5 m ', 300_000],
  ];
  for (const [text, ago] of relative) {
    it(`"${text}" is ${ago / 1000} s ago`, () => {
      expect(now.getTime() - parseSince(text, now).getTime()).toBe(ago);
    });
  }

  it('takes ISO dates and times', () => {
    expect(parseSince('2025-06-01T09:30:00Z', now).toISOString()).toBe('2025-06-01T09:30:00.000Z');
    expect(parseSince('2025-06-01T09:30:00+02:00', now).toISOString()).toBe('2025-06-01T07:30:00.000Z');
    expect(parseSince('2025-06-01T09:30', now).getTime()).toBe(new Date(2025, 5, 1, 9, 30).getTime());
    expect(parseSince('2025-06-01 09:30', now).getTime()).toBe(new Date(2025, 5, 1, 9, 30).getTime());
    expect(parseSince('2025-06-01', now).toISOString()).toBe('2025-06-01T00:00:00.000Z');
  });

  it('takes a clock time as today', () => {
    expect(parseSince('09:05', now).getTime()).toBe(new Date(2025, 5, 15, 9, 5, 0).getTime());
    expect(parseSince('09:05:07', now).getTime()).toBe(new Date(2025, 5, 15, 9, 5, 7).getTime());
  });

  for (const bad of ['yesterday', '10', '10y', '-5m', '25:00', '2025-13-45', '2025-06-01T', '']) {
    it(`rejects "${bad}" and says what it takes`, () => {
      expect(() => parseSince(bad, now)).toThrow(UsageError);
      expect(() => parseSince(bad, now)).toThrow(/ISO date or time.*10m, 2h, 1d/);
    });
  }
});

describe('log lines for humans', () => {
  const base = { audit: true as const, vm: 'work', portal: 'FileChooser', request: 'r1', grant: null };
  const at = (h: number, m: number, s: number, day = 15) => new Date(2025, 5, day, h, m, s).toISOString();

  it('shows a grant with its file and id', () => {
    const line: AuditLine = { ...base, time: at(12, 3, 4), decision: 'allow', reason: 'user', grant: ['1a2b3c'], asked: { paths: ['/home/alice/Reports/q3.pdf'] } };
    expect(formatLine(line, now)).toBe('12:03:04 work FileChooser allow (user) q3.pdf → grant 1a2b3c');
  });

  it('shows the rule behind a policy deny', () => {
    const line: AuditLine = { ...base, time: at(9, 0, 0), decision: 'deny', reason: 'policy', rule: 'FileChooser * work deny' };
    expect(formatLine(line, now)).toBe('09:00:00 work FileChooser deny (policy) by rule "FileChooser * work deny"');
  });

  it('shows a flood burst by its count', () => {
    const line: AuditLine = { ...base, time: at(9, 0, 0), decision: 'deny', reason: 'flood', flood: { phase: 'end', refused: 999 } };
    expect(formatLine(line, now)).toBe('09:00:00 work FileChooser deny (flood) burst over, 999 refused');
  });

  it('shows a revoke and dates lines from other days', () => {
    const line: AuditLine = { ...base, time: at(8, 1, 2, 14), request: 'grants revoke', decision: 'revoke', reason: 'cli', grant: ['9f'] };
    expect(formatLine(line, now)).toBe('2025-06-14 08:01:02 work FileChooser revoke (cli) grant 9f');
  });
});
