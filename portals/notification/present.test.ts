import { describe, expect, it } from 'vitest';
import { capsFrom, escapeMarkup, presentNotification, SHOWN_CAPS } from './present.js';
import type { NotificationParams } from './schema.js';

const n = (patch: Partial<NotificationParams> = {}): NotificationParams => ({ id: 1, kind: 'libnotify', appName: 'mail', title: 'Hi', body: 'text', actions: [], urgency: 'normal', ...patch });
const markup = { markup: true, actions: true };

describe('Notification: what the user sees on the host', () => {
  it('labels the app name and the summary with the VM\'s label from the host\'s config', () => {
    const a = presentNotification('work', n(), markup);
    expect(a.appName).toBe('work: mail');
    expect(a.summary).toBe('[work] Hi');
    expect(a.icon).toBe('');
    expect(presentNotification('work', n({ appName: '', title: '' }), markup)).toMatchObject({ appName: 'work', summary: '[work]' });
  });

  it('cannot pretend to be another VM or the host: the label always comes first', () => {
    const a = presentNotification('shop', n({ appName: 'bank', title: '[bank] Your password expired' }), markup);
    expect(a.summary.startsWith('[shop] ')).toBe(true);
    expect(a.appName).toBe('shop: bank');
  });

  it('escapes body markup for a server that parses it, and only then', () => {
    const body = '<b>bold</b> <a href="http://evil">x</a> <img src="file:///etc/passwd"/> &amp;';
    expect(presentNotification('work', n({ body }), markup).body).toBe('&lt;b&gt;bold&lt;/b&gt; &lt;a href="http://evil"&gt;x&lt;/a&gt; &lt;img src="file:///etc/passwd"/&gt; &amp;amp;');
    expect(presentNotification('work', n({ body }), { markup: false, actions: true }).body).toBe(body);
    // The summary is plain text by the spec: never escaped.
    expect(presentNotification('work', n({ title: 'a < b & c' }), markup).summary).toBe('[work] a < b & c');
    expect(escapeMarkup('<&>')).toBe('&lt;&amp;&gt;');
  });

  it('makes control, bidi and invisible characters visible, and caps every text', () => {
    const a = presentNotification('work', n({ title: 'Pay\u202enow\x1b[31m', body: `line1\r\nline2\u0000${'y'.repeat(4000)}` }), markup);
    expect(a.summary).toBe('[work] Pay\\u{202e}now\\x1b[31m');
    expect(a.body.startsWith('line1\nline2\\x00yyy')).toBe(true);
    expect([...a.body].length).toBeLessThanOrEqual(SHOWN_CAPS.body);
    expect(a.body.endsWith('…')).toBe(true);
    const lines = presentNotification('work', n({ body: Array.from({ length: 40 }, (_, i) => `l${i}`).join('\n') }), markup).body.split('\n');
    expect(lines).toHaveLength(SHOWN_CAPS.bodyLines + 1);
    expect(lines.at(-1)).toBe('… (28 more lines not shown)');
    expect([...presentNotification('work', n({ title: 't'.repeat(500) }), markup).summary].length).toBe('[work] '.length + SHOWN_CAPS.title);
  });

  it('sends actions with cleaned labels under the wire keys, and none to a server without actions', () => {
    const actions = [{ key: 'default', label: '' }, { key: 'a0', label: 'Re\u200bply' }, { key: 'a1', label: '   ' }];
    expect(presentNotification('work', n({ actions }), markup).actions).toEqual(['default', '', 'a0', 'Re\\u{200b}ply', 'a1', 'Action']);
    expect(presentNotification('work', n({ actions }), { markup: true, actions: false }).actions).toEqual([]);
  });

  it('passes the urgency as the spec\'s byte and a replaced notification\'s host id', () => {
    expect(presentNotification('work', n({ urgency: 'critical' }), markup, 42)).toMatchObject({ urgency: 2, replacesId: 42, expireTimeout: -1 });
    expect(presentNotification('work', n({ urgency: 'low' }), markup).urgency).toBe(0);
  });

  it('reads the server\'s capabilities', () => {
    expect(capsFrom(['body', 'body-markup', 'actions'])).toEqual({ markup: true, actions: true });
    expect(capsFrom(['body'])).toEqual({ markup: false, actions: false });
    expect(capsFrom(undefined)).toEqual({ markup: false, actions: false });
  });
});
