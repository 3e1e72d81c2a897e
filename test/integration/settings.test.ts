import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus } from '../../src/dbus/bus.js';
import { runProgram } from '../../src/exec.js';
import { World } from '../../src/testbed/world.js';
import { startXvfb, type Xvfb } from '../helpers/xvfb.js';

/**
 * The host's look, mirrored into a VM: the host session's Settings portal is
 * the stock xdg-desktop-portal over the real xdg-desktop-portal-gtk, which
 * reads GSettings; the user changes a setting with `gsettings set`, as GNOME
 * Settings does. An app in the VM asks its own stock xdg-desktop-portal,
 * which asks our guest backend.
 */
const DESKTOP = { destination: 'org.freedesktop.portal.Desktop', path: '/org/freedesktop/portal/desktop', interface: 'org.freedesktop.portal.Settings' };
const INTERFACE = 'org.gnome.desktop.interface';
const APPEARANCE = 'org.freedesktop.appearance';

let x: Xvfb;
let world: World;
let app: Bus;

beforeAll(async () => {
  x = await startXvfb();
  world = await World.start([{ name: 'work' }, { name: 'shop' }], { gtkDialog: { display: x.display, sharedSettings: true } });
  await setOnHost('color-scheme', 'prefer-dark');
  await setOnHost('font-name', 'Cantarell 13');
  await setOnHost('clock-format', '12h');
  app = await Bus.connect(world.guest('work').bus.address);
});
afterAll(async () => {
  app?.close();
  await world?.stop();
  await x?.stop();
});

/** What the user does in GNOME Settings, through the same GSettings. */
async function setOnHost(key: string, value: string): Promise<void> {
  await runProgram('gsettings', ['set', INTERFACE, key, value], { env: { ...world.hostBus.env, GSETTINGS_BACKEND: 'keyfile' } });
}

/** A Settings value as the frontend answers Read: xdg-desktop-portal 1.16 wraps it in one more variant. */
function unwrap(v: unknown): unknown {
  while (v && typeof v === 'object' && 'signature' in v && 'value' in v) v = (v as { value: unknown }).value;
  return v;
}

async function readAll(bus: Bus, namespaces: string[]): Promise<Record<string, Record<string, unknown>>> {
  const [all] = await bus.call({ ...DESKTOP, member: 'ReadAll', signature: 'as', body: [namespaces], timeoutMs: 20_000 });
  return Object.fromEntries(Object.entries(all as Record<string, Record<string, unknown>>).map(([ns, keys]) => [ns, Object.fromEntries(Object.entries(keys).map(([k, v]) => [k, unwrap(v)]))]));
}

/** Every SettingChanged the app sees from its frontend, from now on. */
async function changes(bus: Bus): Promise<{ seen: [string, string, unknown][]; stop: () => Promise<void> }> {
  const seen: [string, string, unknown][] = [];
  const owner = (await bus.nameOwner(DESKTOP.destination))!;
  const stop = await bus.subscribe({ sender: owner, path: DESKTOP.path, interface: DESKTOP.interface, member: 'SettingChanged' }, (body) => {
    const [ns, key, value] = body as [string, string, unknown];
    seen.push([ns, key, unwrap(value)]);
  });
  return { seen, stop };
}

describe('the host\'s look in a VM', () => {
  it('an app in the VM reads the host\'s colour scheme and fonts from its own Settings portal', async () => {
    const all = await readAll(app, [APPEARANCE, INTERFACE]);
    expect(all[APPEARANCE]).toMatchObject({ 'color-scheme': 1 });
    expect(all[INTERFACE]).toMatchObject({ 'color-scheme': 'prefer-dark', 'font-name': 'Cantarell 13' });
    const [one] = await app.call({ ...DESKTOP, member: 'Read', signature: 'ss', body: [INTERFACE, 'font-name'], timeoutMs: 20_000 });
    expect(unwrap(one)).toBe('Cantarell 13');
  });

  it('nothing outside the allow list crosses, though the host has it', async () => {
    const host = await Bus.connect(world.hostBus.address);
    try {
      expect((await readAll(host, [INTERFACE]))[INTERFACE]).toMatchObject({ 'clock-format': '12h' });
    } finally {
      host.close();
    }
    const all = await readAll(app, []);
    expect(Object.keys(all).sort()).toEqual([APPEARANCE, INTERFACE]);
    expect(Object.keys(all[INTERFACE]!)).not.toContain('clock-format');
    expect(Object.keys(all[INTERFACE]!).every((k) => ['color-scheme', 'font-name', 'document-font-name', 'monospace-font-name', 'text-scaling-factor', 'font-antialiasing', 'font-hinting', 'font-rgba-order'].includes(k))).toBe(true);
    await expect(app.call({ ...DESKTOP, member: 'Read', signature: 'ss', body: [INTERFACE, 'clock-format'], timeoutMs: 20_000 })).rejects.toThrow(/not found/i);
  });

  it('follows the host live: the user switches to light, and the app is told', async () => {
    const watch = await changes(app);
    try {
      const t0 = Date.now();
      await setOnHost('clock-format', '24h');
      await setOnHost('color-scheme', 'prefer-light');
      await expect.poll(() => watch.seen.find(([ns, k]) => ns === APPEARANCE && k === 'color-scheme'), { timeout: 10_000 }).toEqual([APPEARANCE, 'color-scheme', 2]);
      console.log(`settings: host change → SettingChanged in the VM's app after ${Date.now() - t0} ms`);
      // The clock format changed first, and never arrived.
      expect(watch.seen.some(([, k]) => k === 'clock-format')).toBe(false);
      expect((await readAll(app, [APPEARANCE]))[APPEARANCE]).toMatchObject({ 'color-scheme': 2 });
    } finally {
      await watch.stop();
    }
  });

  it('a deny row stops the mirror: the VM is not served Settings, and the decision is audited', async () => {
    const shop = await Bus.connect(world.guest('shop').bus.address);
    try {
      expect((await readAll(shop, [APPEARANCE]))[APPEARANCE]).toMatchObject({ 'color-scheme': 2 });
      await world.cli(['permissions', 'set', 'shop', 'Settings', 'deny']);
      await expect.poll(() => world.guestExports('shop'), { timeout: 10_000 }).not.toContain('org.freedesktop.impl.portal.Settings');
      expect(await world.guestExports('work')).toContain('org.freedesktop.impl.portal.Settings');
      const watch = await changes(shop);
      await setOnHost('color-scheme', 'prefer-dark');
      await expect.poll(() => readAll(app, [APPEARANCE]).then((a) => a[APPEARANCE]?.['color-scheme']), { timeout: 10_000 }).toBe(1);
      expect(watch.seen).toEqual([]);
      await watch.stop();
      const audit = readFileSync(world.auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(audit).toContainEqual(expect.objectContaining({ vm: 'shop', portal: 'Settings', request: 'served portals', decision: 'deny', rule: expect.stringMatching(/^Settings/) }));
      expect(audit).toContainEqual(expect.objectContaining({ vm: 'work', portal: 'Settings', decision: 'allow', asked: expect.objectContaining({ namespaces: [APPEARANCE, INTERFACE] }) }));
    } finally {
      shop.close();
    }
  });
});
