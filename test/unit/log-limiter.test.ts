import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LogLimiter } from '../../src/protocol/log-limiter.js';
import { captureLogger } from '../helpers/log-capture.js';

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

const msgs = (out: ReturnType<typeof captureLogger>) => out.lines().map((l) => String(l.msg));

describe('log limiter', () => {
  it('writes the first line of a kind, counts the rest, and gives the count once the burst is quiet', () => {
    const limiter = new LogLimiter({ quietMs: 1000 });
    const out = captureLogger();
    for (let i = 0; i < 5000; i++) limiter.write('vm:work', 'unknown-id', out.log, 'warn', { id: i }, 'peer answered a request that does not exist');
    expect(msgs(out)).toEqual(['peer answered a request that does not exist']);
    expect(out.lines()[0]).toMatchObject({ id: 0, burst: 'unknown-id' });
    vi.advanceTimersByTime(999);
    expect(msgs(out)).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(msgs(out)).toEqual(['peer answered a request that does not exist', '…4999 more like this: peer answered a request that does not exist']);
    // A new burst starts with a line of its own.
    limiter.write('vm:work', 'unknown-id', out.log, 'warn', {}, 'peer answered a request that does not exist');
    expect(msgs(out)).toHaveLength(3);
  });

  it('a burst that never goes quiet is counted out every reporting period, so lines stay few per second', () => {
    const limiter = new LogLimiter({ quietMs: 1000, reportEveryMs: 10_000 });
    const out = captureLogger();
    // 1,000 a second for 35 s.
    for (let ms = 0; ms < 35_000; ms += 10) {
      for (let i = 0; i < 10; i++) limiter.write('vm:work', 'unknown-method', out.log, 'warn', {}, 'no such method');
      vi.advanceTimersByTime(10);
    }
    vi.advanceTimersByTime(1000);
    const lines = out.lines();
    expect(lines.length).toBeLessThanOrEqual(6);
    const counted = lines.slice(1).reduce((n, l) => n + Number(l.more), 0);
    expect(counted + 1).toBe(35_000);
    expect(lines.slice(1, -1).every((l) => l.ongoing === true)).toBe(true);
  });

  it('keeps kinds and scopes apart: one VM\'s flood does not hide another VM\'s first mistake', () => {
    const limiter = new LogLimiter();
    const out = captureLogger();
    for (let i = 0; i < 100; i++) limiter.write('vm:work', 'unknown-id', out.log, 'warn', {}, 'work: unknown id');
    limiter.write('vm:work', 'malformed-frame', out.log, 'warn', {}, 'work: malformed');
    limiter.write('vm:shop', 'unknown-id', out.log, 'warn', {}, 'shop: unknown id');
    expect(msgs(out)).toEqual(['work: unknown id', 'work: malformed', 'shop: unknown id']);
  });

  it('ending a scope writes its counts at once and leaves other scopes alone', () => {
    const limiter = new LogLimiter({ quietMs: 60_000 });
    const out = captureLogger();
    for (let i = 0; i < 3; i++) limiter.write('link:1', 'unknown-id', out.log, 'warn', {}, 'unknown id');
    for (let i = 0; i < 3; i++) limiter.write('link:2', 'unknown-id', out.log, 'warn', {}, 'unknown id');
    limiter.endScope('link:1');
    expect(msgs(out)).toEqual(['unknown id', 'unknown id', '…2 more like this: unknown id']);
    expect(limiter.active).toBe(1);
    limiter.flush();
    expect(msgs(out)).toHaveLength(4);
    expect(limiter.active).toBe(0);
  });

  it('a kind that happened once has no summary', () => {
    const limiter = new LogLimiter({ quietMs: 100 });
    const out = captureLogger();
    limiter.write('vm:work', 'fatal:not-json', out.log, 'warn', {}, 'closing link: not JSON');
    vi.advanceTimersByTime(1000);
    expect(msgs(out)).toEqual(['closing link: not JSON']);
    expect(limiter.active).toBe(0);
  });
});
