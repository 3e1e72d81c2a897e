import { afterEach, describe, expect, it, vi } from 'vitest';
import type { AuditEntry } from '../../src/host/audit.js';
import { NotificationAudit } from './counts.js';
import { LiveNotifications } from './live.js';
import { TokenBucket } from './rate.js';

describe('Notification: the per-VM rate limit', () => {
  it('lets a burst through, then one a second, and refills no further than the burst', () => {
    let t = 0;
    const b = new TokenBucket({ burst: 3, perSecond: 1, now: () => t });
    expect([b.take(), b.take(), b.take(), b.take()]).toEqual([true, true, true, false]);
    t = 500;
    expect(b.take()).toBe(false);
    t = 1000;
    expect([b.take(), b.take()]).toEqual([true, false]);
    t = 60_000;
    expect([b.take(), b.take(), b.take(), b.take()]).toEqual([true, true, true, false]);
    t = 0; // a clock that steps back gives nothing
    expect(b.take()).toBe(false);
  });
});

describe('Notification: one VM\'s live notifications', () => {
  it('maps both ways, and a host id that is not this VM\'s finds nothing', () => {
    const l = new LiveNotifications(4);
    l.set(1, 100);
    expect(l.hostId(1)).toBe(100);
    expect(l.guestId(100)).toBe(1);
    expect(l.guestId(101)).toBeUndefined();
    expect(l.forgetGuest(2)).toBeUndefined();
  });

  it('replaces in place, and a reused host id belongs to its newest holder', () => {
    const l = new LiveNotifications(4);
    l.set(1, 100);
    l.set(1, 101);
    expect(l.guestId(100)).toBeUndefined();
    expect(l.size).toBe(1);
    l.set(2, 101);
    expect(l.hostId(1)).toBeUndefined();
    expect(l.guestId(101)).toBe(2);
  });

  it('forgets the oldest past its cap, and says which', () => {
    const l = new LiveNotifications(2);
    l.set(1, 100);
    l.set(2, 200);
    expect(l.set(3, 300)).toEqual([1]);
    expect(l.guestId(100)).toBeUndefined();
    expect(l.size).toBe(2);
    expect(l.forgetHost(200)).toBe(2);
    expect(l.clear()).toEqual([3]);
  });
});

describe('Notification: audited as counts, not contents', () => {
  const setup = () => {
    const lines: AuditEntry[] = [];
    let t = 0;
    const a = new NotificationAudit({ vm: 'work', audit: (e) => lines.push(e), now: () => t });
    return { lines, a, tick: (ms: number) => (t += ms) };
  };

  it('audits the first notification, then one count line per period, and nothing for an idle period', () => {
    const { lines, a, tick } = setup();
    a.allowed('libnotify', 'r1');
    a.allowed('libnotify', 'r2');
    a.allowed('portal', 'r3');
    expect(lines).toEqual([{ vm: 'work', portal: 'Notification', grant: null, request: 'r1', decision: 'allow', reason: 'policy', asked: { kind: 'libnotify', first: true } }]);
    tick(600_000);
    a.flush();
    expect(lines[1]).toEqual({ vm: 'work', portal: 'Notification', grant: null, request: 'notification counts', decision: 'allow', reason: 'policy', asked: { shown: 2, libnotify: 1, portal: 1, seconds: 600 } });
    a.flush();
    expect(lines).toHaveLength(2);
    expect(JSON.stringify(lines)).not.toMatch(/mail|title|body/);
  });

  it('audits every deny with its row', () => {
    const { lines, a } = setup();
    a.denied('portal', 'r1', 'Notification portal work deny');
    a.denied('portal', 'r2', undefined, 'cannot read the policy');
    expect(lines).toEqual([
      expect.objectContaining({ request: 'r1', decision: 'deny', reason: 'policy', rule: 'Notification portal work deny', asked: { kind: 'portal' } }),
      expect.objectContaining({ request: 'r2', decision: 'deny', reason: 'failure' }),
    ]);
  });

  afterEach(() => void vi.useRealTimers());

  it('audits a burst of rate-limit refusals twice: when it starts, and its count once it has been quiet', () => {
    vi.useFakeTimers();
    const { lines, a } = setup();
    const limits = { burst: 10, perSecond: 1 };
    for (let i = 0; i < 5; i++) a.limited('libnotify', () => `r${i}`, limits);
    expect(lines).toEqual([expect.objectContaining({ request: 'r0', decision: 'deny', reason: 'flood', flood: { phase: 'start', refused: 1 }, asked: { kind: 'libnotify', ...limits } })]);
    // The trickle the rate limit lets through a sustained flood does not end the burst.
    a.allowed('libnotify', 'r8');
    vi.advanceTimersByTime(4000);
    a.limited('libnotify', () => 'r9', limits);
    vi.advanceTimersByTime(4000);
    expect(lines).toHaveLength(2);
    vi.advanceTimersByTime(1000);
    expect(lines[2]).toEqual(expect.objectContaining({ request: 'r0', decision: 'deny', reason: 'flood', flood: { phase: 'end', refused: 6 } }));
    expect(lines).toHaveLength(3);
  });

  it('ends an open burst at the end of the period', () => {
    vi.useFakeTimers();
    const { lines, a } = setup();
    a.limited('portal', () => 'r1', { burst: 10, perSecond: 1 });
    a.flush();
    expect(lines.map((l) => l.flood?.phase)).toEqual(['start', 'end']);
    vi.advanceTimersByTime(10_000);
    expect(lines).toHaveLength(2);
  });
});
