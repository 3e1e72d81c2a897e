import { describe, expect, it } from 'vitest';
import { variant } from '../../src/dbus/bus.js';
import { actionsFrom, urgencyFrom } from './guest-libnotify.js';
import { fromPortal } from './guest-portal.js';
import { GuestNotifications } from './guest-state.js';
import { clipForWire, MAX_ACTIONS, NotificationAction, NotificationAdd, NotificationClosed, NotificationRemove, WIRE_CAPS } from './schema.js';

const ok = { id: 7, kind: 'libnotify', appName: 'mail', title: 'New mail', body: 'from Bob', actions: [{ key: 'default', label: '' }, { key: 'a0', label: 'Reply' }], urgency: 'normal' };

describe('Notification: the wire is capped in size and count', () => {
  it('takes a well-formed notification', () => {
    expect(NotificationAdd.params.safeParse(ok).success).toBe(true);
  });

  it('refuses oversized text, too many actions, unknown keys and fields, and ids outside uint32', () => {
    const bad = (patch: Record<string, unknown>) => NotificationAdd.params.safeParse({ ...ok, ...patch }).success;
    expect(bad({ body: 'x'.repeat(WIRE_CAPS.body + 1) })).toBe(false);
    expect(bad({ title: 'x'.repeat(WIRE_CAPS.title + 1) })).toBe(false);
    expect(bad({ appName: 'x'.repeat(WIRE_CAPS.appName + 1) })).toBe(false);
    expect(bad({ actions: Array.from({ length: MAX_ACTIONS + 1 }, (_, i) => ({ key: `a${i % 8}`, label: 'x' })) })).toBe(false);
    expect(bad({ actions: [{ key: 'a0', label: 'x' }, { key: 'a0', label: 'y' }] })).toBe(false);
    expect(bad({ actions: [{ key: 'reply', label: 'x' }] })).toBe(false);
    expect(bad({ actions: [{ key: 'a0', label: 'x'.repeat(WIRE_CAPS.label + 1) }] })).toBe(false);
    expect(bad({ urgency: 'emergency' })).toBe(false);
    expect(bad({ id: 0 })).toBe(false);
    expect(bad({ id: 2 ** 32 })).toBe(false);
    expect(bad({ kind: 'gtk' })).toBe(false);
    expect(bad({ icon: '/etc/shadow' })).toBe(false);
  });

  it('answers shown, refused with a reason, or the flood gate\'s refusal', () => {
    expect(NotificationAdd.result.safeParse({ shown: true }).success).toBe(true);
    expect(NotificationAdd.result.safeParse({ shown: false, reason: 'rate-limit', message: 'too many' }).success).toBe(true);
    expect(NotificationAdd.result.safeParse({ response: 2, results: {} }).success).toBe(true);
    expect(NotificationAdd.result.safeParse({ shown: false, reason: 'because', message: '' }).success).toBe(false);
    expect(NotificationRemove.result.safeParse({ response: 2, results: {} }).success).toBe(true);
  });

  it('sends the host\'s clicks and closes back only as the guest\'s ids and wire keys', () => {
    expect(NotificationAction.params.safeParse({ id: 3, action: 'a1' }).success).toBe(true);
    expect(NotificationAction.params.safeParse({ id: 3, action: 'reply' }).success).toBe(false);
    expect(NotificationClosed.params.safeParse({ id: 3, reason: 5 }).success).toBe(false);
  });

  it('clips for the wire without splitting a surrogate pair', () => {
    expect(clipForWire('abc', 5)).toBe('abc');
    expect(clipForWire('abcdef', 3)).toBe('abc');
    expect(clipForWire('ab😀', 3)).toBe('ab');
    expect(clipForWire('ab😀', 4)).toBe('ab😀');
  });
});

describe('Notification: the guest half translates apps\' notifications to the wire', () => {
  it('maps libnotify\'s flat action list to wire keys, keeping the app\'s keys in the guest', () => {
    const { actions, keys } = actionsFrom(['default', 'Open', 'reply', 'Reply', 'reply', 'Again', 'odd']);
    expect(actions).toEqual([{ key: 'default', label: 'Open' }, { key: 'a0', label: 'Reply' }]);
    expect(keys).toEqual({ default: 'default', a0: 'reply' });
    const many = actionsFrom(Array.from({ length: 40 }, (_, i) => (i % 2 ? 'L' : `k${i}`)));
    expect(many.actions).toHaveLength(MAX_ACTIONS);
    expect(NotificationAdd.params.safeParse({ ...ok, actions: many.actions }).success).toBe(true);
    expect(actionsFrom('not a list').actions).toEqual([]);
  });

  it('reads the urgency hint as a byte, anything else as normal', () => {
    expect(urgencyFrom({ urgency: variant('y', 2) })).toBe('critical');
    expect(urgencyFrom({ urgency: variant('y', 0) })).toBe('low');
    expect(urgencyFrom({ urgency: variant('s', 'critical') })).toBe('normal');
    expect(urgencyFrom({})).toBe('normal');
  });

  it('maps a portal notification, keeping action names and targets in the guest', () => {
    const n = fromPortal({
      title: variant('s', 'Build done'),
      body: variant('s', 'x'.repeat(10_000)),
      priority: variant('s', 'urgent'),
      icon: variant('s', 'dialog-information'),
      'default-action': variant('s', 'app.open'),
      'default-action-target': variant('s', 'build-42'),
      buttons: variant('aa{sv}', [
        { label: variant('s', 'Logs'), action: variant('s', 'app.logs'), target: variant('u', 42) },
        { label: variant('s', 'no action') },
      ]),
    });
    expect(n.title).toBe('Build done');
    expect(n.body).toHaveLength(WIRE_CAPS.body);
    expect(n.urgency).toBe('critical');
    expect(n.actions).toEqual([{ key: 'default', label: '' }, { key: 'a0', label: 'Logs' }]);
    expect(n.targets.default).toMatchObject({ name: 'app.open', target: { value: 'build-42' } });
    expect(n.targets.a0).toMatchObject({ name: 'app.logs', target: { value: 42 } });
    const { targets: _, ...wire } = n;
    expect(NotificationAdd.params.safeParse({ ...ok, kind: 'portal', ...wire }).success).toBe(true);
  });

  it('gives each notification an id of one space, reuses a portal app\'s own id, and forgets the oldest past the cap', () => {
    const s = new GuestNotifications(3);
    const a = s.allocate();
    s.set(a, { kind: 'libnotify', sender: ':1.5', keys: {} });
    const p = s.portalIdFor('org.example.App', 'n1');
    expect(p).not.toBe(a);
    s.set(p, { kind: 'portal', appId: 'org.example.App', portalId: 'n1', frontend: ':1.2', actions: {} });
    expect(s.portalIdFor('org.example.App', 'n1')).toBe(p);
    expect(s.portalIdFor('org.other.App', 'n1')).not.toBe(p);
    const b = s.allocate();
    s.set(b, { kind: 'libnotify', sender: ':1.5', keys: {} });
    const c = s.allocate();
    expect(s.set(c, { kind: 'libnotify', sender: ':1.5', keys: {} })).toEqual([a]);
    expect(s.get(a)).toBeUndefined();
    s.delete(p);
    expect(s.findPortal('org.example.App', 'n1')).toBeUndefined();
  });
});
