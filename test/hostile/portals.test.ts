import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAuditLines } from '../../src/host/audit.js';
import { RawLink } from '../helpers/raw-link.js';
import { World } from '../../src/testbed/world.js';

/**
 * The newer portals attacked over a raw link, past the guest backend's own
 * checks, as a compromised VM would: Notification (outside the daemon's
 * flood gate, with its own limit), OpenURI (a link is the only thing that
 * may cross) and the host-to-guest methods of folder shares and links,
 * which a guest must not be able to call on the host. Meanwhile another VM
 * is served as if nothing happened.
 */
let world: World;
let files: string;

beforeAll(async () => {
  world = await World.start([{ name: 'work', label: 'Work' }, { name: 'evil' }]);
  files = world.hostDir(path.join(world.root, 'files'));
});
afterAll(async () => {
  await world?.stop();
});

async function rawLink(vm: string) {
  const link = await RawLink.connect(world.endpointOf(vm));
  link.send({ t: 'hello', versions: [2, 2], agent: { name: 'raw', version: '0' } });
  await expect.poll(() => link.frames[0]?.t).toBe('welcome');
  const answer = async (id: number) => {
    await expect.poll(() => link.frames.find((f) => f.id === id), { timeout: 20_000 }).toBeDefined();
    return link.frames.find((f) => f.id === id)!;
  };
  const request = async (id: number, method: string, params: unknown) => {
    link.send({ t: 'req', id, method, params });
    return answer(id);
  };
  return { link, request, answer };
}

const note = (id: number, extra: Record<string, unknown> = {}) => ({ id, kind: 'libnotify', appName: 'mail', title: 'Hi', body: 'text', actions: [], urgency: 'normal', ...extra });
const auditOf = (vm: string, portal: string) => parseAuditLines(readFileSync(world.auditFile, 'utf8').split('\n')).filter((l) => l.vm === vm && l.portal === portal);

describe('Notification, from a hostile guest', () => {
  it('refuses each malformed notification with invalid-params, and the link stays up', async () => {
    const { link, request } = await rawLink('evil');
    const bad: [string, unknown][] = [
      ['a title past its cap', note(1, { title: 'x'.repeat(513) })],
      ['a body past its cap', note(2, { body: 'x'.repeat(4097) })],
      ['nine actions', note(3, { actions: Array.from({ length: 9 }, (_, i) => ({ key: `a${i}`, label: 'x' })) })],
      ['an action key of its own', note(4, { actions: [{ key: 'rm -rf', label: 'x' }] })],
      ['two actions with one key', note(5, { actions: [{ key: 'a0', label: 'x' }, { key: 'a0', label: 'y' }] })],
      ['id 0', note(0)],
      ['an id past 32 bits', note(2 ** 32)],
      ['an unknown field', note(6, { icon: '/etc/passwd' })],
      ['an unknown kind', note(7, { kind: 'kernel' })],
    ];
    let id = 1;
    for (const [what, params] of bad) expect(await request(id++, 'notification.add', params), what).toMatchObject({ t: 'err', code: 'invalid-params' });
    expect(link.closed).toBe(false);
    // One good one after them is answered on its merits (this host has no notification server).
    expect(await request(id++, 'notification.add', note(8))).toMatchObject({ t: 'res', result: { shown: false, reason: 'host', message: 'the host has no notification server' } });
    link.destroy();
  });

  it('a burst of 500 is refused past the limit, never by the flood gate, and neither evil\'s nor work\'s file dialogs are slowed', async () => {
    const { link, answer, request } = await rawLink('evil');
    const before = auditOf('evil', 'Notification').length;
    for (let i = 1; i <= 500; i++) link.send({ t: 'req', id: i, method: 'notification.add', params: note(i) });
    const answers = await Promise.all(Array.from({ length: 500 }, (_, i) => answer(i + 1)));
    // Each is answered: shown or refused by this portal's own limit, or "busy" past the link's in-flight cap; never the flood gate's response 2.
    const kinds = new Map<string, number>();
    for (const a of answers) {
      const k = a.t === 'err' ? `err:${String(a.code)}` : 'response' in (a.result as object) ? 'flood-gate' : `res:${String((a.result as { reason?: string }).reason ?? 'shown')}`;
      kinds.set(k, (kinds.get(k) ?? 0) + 1);
    }
    // At most the bucket's burst (and what refilled meanwhile) got through to the host (which has no server here).
    expect(kinds.get('res:host') ?? 0).toBeLessThanOrEqual(12);
    expect(kinds.get('res:rate-limit') ?? 0).toBeGreaterThanOrEqual(50);
    expect([...kinds.keys()].filter((k) => !['res:host', 'res:rate-limit', 'err:busy'].includes(k)), JSON.stringify([...kinds])).toEqual([]);
    // The refusals are audited as one burst, not a line each; what the limit let through is one line each (an error here: no server).
    const lines = auditOf('evil', 'Notification').slice(before);
    expect(lines.filter((l) => l.reason === 'flood').length, JSON.stringify(lines)).toBe(1);
    expect(lines.length).toBeLessThanOrEqual(1 + (kinds.get('res:host') ?? 0));
    // evil's own file dialog, and work's, are still served: notifications did not use up their flood budget.
    const file = world.hostFile(path.join(files, 'report.txt'), 'still served');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${file}`] }));
    expect(await request(1000, 'fileChooser.open', { kind: 'open', title: 'Open', appId: '', options: {} })).toMatchObject({ t: 'res', result: { response: 0 } });
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(0);
    expect(link.closed).toBe(false);
    link.destroy();
  });

  it('cannot close what it never showed', async () => {
    const { link, request } = await rawLink('evil');
    expect(await request(1, 'notification.remove', { id: 4242 })).toMatchObject({ t: 'res', result: { removed: false } });
    link.destroy();
  });
});

describe('OpenURI, from a hostile guest', () => {
  it('only an http, https or mailto link crosses: files, scripts, disguised and oversized links are invalid-params and nothing is asked or opened', async () => {
    const { link, request } = await rawLink('evil');
    const bad: [string, string][] = [
      ['a file', 'file:///etc/passwd'],
      ['a script', 'javascript:alert(1)'],
      ['data', 'data:text/html,<script>alert(1)</script>'],
      ['a user name before the host', 'https://bank.example.com@evil.example/login'],
      ['a bidi override', 'https://example.com/\u202efdp.exe'],
      ['a zero-width space', 'https://exa\u200bmple.com/'],
      ['5,000 bytes', `https://example.com/${'a'.repeat(5000)}`],
      ['no host', 'https://'],
      ['an app scheme', 'steam://run/1'],
    ];
    let id = 1;
    for (const [what, uri] of bad) expect(await request(id++, 'openUri.open', { uri }), what).toMatchObject({ t: 'err', code: 'invalid-params' });
    expect(await request(id++, 'openUri.open', { uri: 'https://example.com/', where: 'host' }), 'the guest choosing where').toMatchObject({ t: 'err', code: 'invalid-params' });
    expect(auditOf('evil', 'OpenURI')).toEqual([]);
    expect(link.closed).toBe(false);
    link.destroy();
  });
});

describe('Usb, from a hostile guest', () => {
  it('names a device by its id and nothing else: paths, keys, VM names and oversized ids are invalid-params, and nothing is asked', async () => {
    const { link, request } = await rawLink('evil');
    const bad: [string, unknown][] = [
      ['a path', { id: '../../dev/bus/usb/001/005' }],
      ['a bus id', { id: '1-2' }],
      ['a permission key', { id: 'usb:1050/0407/Yubico_YubiKey' }],
      ['address 0', { id: 'b1d0' }],
      ['a four-digit bus', { id: 'b1000d1' }],
      ['an id past its cap', { id: `b1d${'1'.repeat(300)}` }],
      ['the guest naming the VM', { id: 'b1d5', vm: 'work' }],
      ['the guest naming the route', { id: 'b1d5', hostBus: 1, hostAddress: 5 }],
      ['no id', {}],
    ];
    let id = 1;
    for (const [what, params] of bad) {
      expect(await request(id++, 'usb.acquire', params), what).toMatchObject({ t: 'err', code: 'invalid-params' });
      expect(await request(id++, 'usb.release', params), what).toMatchObject({ t: 'err', code: 'invalid-params' });
    }
    expect(await request(id++, 'usb.list', { all: true })).toMatchObject({ t: 'err', code: 'invalid-params' });
    expect(auditOf('evil', 'Usb')).toEqual([]);
    // Well-formed: answered on its merits. This machine has no USB bus, so there is nothing to have.
    expect(await request(id++, 'usb.list', {})).toMatchObject({ t: 'res', result: { devices: [] } });
    expect(await request(id++, 'usb.acquire', { id: 'b1d5' })).toMatchObject({ t: 'err', code: 'invalid-params', message: expect.stringMatching(/no USB device b1d5 on the host now/) });
    expect(await request(id++, 'usb.release', { id: 'b1d5' })).toMatchObject({ t: 'res', result: { released: false } });
    expect(auditOf('evil', 'Usb')).toEqual([expect.objectContaining({ decision: 'error', reason: 'failure', asked: expect.objectContaining({ device: 'b1d5', via: 'guest' }) })]);
    expect(link.closed).toBe(false);
    link.destroy();
  });
});

describe('host-to-guest methods, called by a guest', () => {
  it('folder.mount, folder.unmount, share.mount, openUri.launch and the usbip.* requests are unknown methods to the host; the link stays up', async () => {
    const { link, request } = await rawLink('evil');
    let id = 1;
    for (const [method, params] of [
      ['folder.mount', { name: 'x', tag: 'xdpvm-f-x' }],
      ['folder.unmount', { name: 'x', tag: 'xdpvm-f-x' }],
      ['share.mount', { tag: 'xdpvm-doc' }],
      ['openUri.launch', { uri: 'https://example.com/' }],
      ['usbip.export', { busid: '1-1', port: 'io.github.xdp_vm.usbip.x' }],
      ['usbip.import', { port: 'io.github.xdp_vm.usbip.x', devid: 65539, speed: 5 }],
      ['usbip.devices', {}],
    ] as const) {
      expect(await request(id++, method, params), method).toMatchObject({ t: 'err', code: 'unknown-method' });
    }
    expect(await request(id++, 'session.ping', { seq: 7 })).toMatchObject({ t: 'res', result: { seq: 7 } });
    link.destroy();
  });
});
