import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus, BusCallError, variant } from '../../src/dbus/bus.js';
import { startService, type Service } from '../../src/exec.js';
import { packageRoot } from '../../src/paths.js';
import { World } from '../../src/testbed/world.js';
import { startDunst, testProgram, type Dunst, type DunstEntry } from '../helpers/dunst.js';
import { startXvfb, type Xvfb } from '../helpers/xvfb.js';

/**
 * Guest apps' notifications on the host, with a real notification server
 * there: dunst on a private X display, owning org.freedesktop.Notifications
 * on the host bus. `dunstctl history` is what the user saw; `dunstctl action`
 * and dunst's context menu are the user's clicks.
 *
 * In the VMs: a libnotify-style client calls org.freedesktop.Notifications on
 * the guest bus, which our guest backend owns; a Flatpak-style app (a
 * bubblewrap sandbox with a /.flatpak-info, which is all the guest's stock
 * xdg-desktop-portal 1.16 checks) calls org.freedesktop.portal.Notification,
 * which the frontend hands to our impl.portal.Notification with its app id.
 *
 * The daemon's own flood gate (shared by all portals) is opened wide here, so
 * what refuses the flood below is the Notification portal's rate limit.
 */
const FDN = { destination: 'org.freedesktop.Notifications', path: '/org/freedesktop/Notifications', interface: 'org.freedesktop.Notifications' };
const PORTAL_NOTIFICATION = 'org.freedesktop.impl.portal.Notification';
const FLATPAK_APP = 'org.example.Notes';

let x: Xvfb;
let world: World;
let dunst: Dunst;

beforeAll(async () => {
  x = await startXvfb();
  world = await World.start([{ name: 'work', label: 'Work' }, { name: 'shop', label: 'Shop' }, { name: 'lab' }], { config: { flood: { maxPending: 100, maxRecent: 100_000 } } });
  const dir = world.hostDir(path.join(world.root, 'dunst'));
  dunst = await startDunst({ dir, display: x.display, busEnv: world.hostBus.env, ...(world.user ? { user: world.user } : {}) });
  world.own(dir);
  // The guest backend starts by D-Bus activation (here: this Introspect), then takes the libnotify name.
  for (const vm of ['work', 'shop', 'lab']) await until(async () => (await world.guestExports(vm)).includes(PORTAL_NOTIFICATION) && !!(await ownerOn(vm)), `VM ${vm}'s guest backend to serve notifications`);
});
afterAll(async () => {
  await dunst?.stop();
  await world?.stop();
  await x?.stop();
});

/** Hooks cannot expect.poll. */
async function until(cond: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`waited ${ms} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function ownerOn(vm: string): Promise<string | undefined> {
  const bus = await Bus.connect(world.guest(vm).bus.address);
  try {
    return await bus.nameOwner(FDN.destination);
  } finally {
    bus.close();
  }
}

/** A libnotify-style client: its own connection to the VM's bus. */
async function app(vm: string): Promise<Bus> {
  return Bus.connect(world.guest(vm).bus.address);
}

function notify(bus: Bus, n: { app?: string; summary: string; body?: string; actions?: string[]; replaces?: number }): Promise<number> {
  return bus
    .call({
      ...FDN,
      member: 'Notify',
      signature: 'susssasa{sv}i',
      body: [n.app ?? 'mail', n.replaces ?? 0, 'mail-unread', n.summary, n.body ?? '', n.actions ?? [], { urgency: variant('y', 1) }, -1],
      timeoutMs: 20_000,
    })
    .then(([id]) => id as number);
}

/** Every signal `member` the client gets from the VM's notification server. */
async function signals(bus: Bus, member: 'ActionInvoked' | 'NotificationClosed'): Promise<{ seen: unknown[][]; stop: () => Promise<void> }> {
  const seen: unknown[][] = [];
  const owner = (await bus.nameOwner(FDN.destination))!;
  const stop = await bus.subscribe({ sender: owner, path: FDN.path, interface: FDN.interface, member }, (body) => seen.push(body));
  return { seen, stop };
}

/** What the user saw of notifications whose summary contains `text`: dismiss what is displayed, then read the history. */
async function seenOnHost(text: string): Promise<DunstEntry[]> {
  await dunst.closeAll();
  return (await dunst.history()).filter((e) => e.summary.includes(text));
}

function auditLines(): Record<string, unknown>[] {
  return readFileSync(world.auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('guest notifications on the host', () => {
  it('a libnotify notification from VM work shows on the host with the VM\'s label, its hostile text cleaned, escaped and capped', async () => {
    const client = await app('work');
    try {
      const hostile = `<b>bold</b> <a href="http://evil.example/">click</a> <img src="file:///etc/passwd"/> & bell\x07 flip\u202eevil\nline two\n${'A'.repeat(200_000)}`;
      const id = await notify(client, { app: 'mail\u200b', summary: 'Invoice <i>due</i>\x1b[2J', body: hostile });
      expect(id).toBeGreaterThan(0);
      await expect.poll(() => dunst.displayed(), { timeout: 10_000 }).toBeGreaterThan(0);
      const [shown] = await seenOnHost('Invoice');
      expect(shown).toBeDefined();
      // The label comes from the host's config (label "Work"), not from the guest.
      expect(shown!.appname).toBe('Work: mail\\u{200b}');
      expect(shown!.summary).toBe('[Work] Invoice <i>due</i>\\x1b[2J');
      // Markup arrives escaped: dunst, which renders body markup, shows the tags as text; nothing links or loads.
      expect(shown!.body).toContain('&lt;b&gt;bold&lt;/b&gt; &lt;a href="http://evil.example/"&gt;click&lt;/a&gt; &lt;img src="file:///etc/passwd"/&gt; &amp; bell\\x07 flip\\u{202e}evil\nline two\nAAAA');
      expect(shown!.body).not.toMatch(/<b>|<a |<img/);
      expect(shown!.body.endsWith('…')).toBe(true);
      expect(shown!.body.length).toBeLessThan(1200);
      expect(shown!.message).not.toContain('<i>'); // dunst escapes the plain-text summary itself
      console.log(`notification: the user saw ${JSON.stringify({ appname: shown!.appname, summary: shown!.summary, body: `${shown!.body.slice(0, 160)}…` })}`);
      // Audited as a count, not contents: the first notification, with no text of it.
      const lines = auditLines().filter((l) => l.portal === 'Notification' && l.vm === 'work');
      expect(lines).toContainEqual(expect.objectContaining({ decision: 'allow', reason: 'policy', grant: null, asked: { kind: 'libnotify', first: true } }));
      expect(JSON.stringify(lines)).not.toMatch(/Invoice|evil|bold/);
    } finally {
      client.close();
    }
  });

  it('clicking its actions on the host reaches the app that notified, as ActionInvoked with its id and its own key', async () => {
    const client = await app('work');
    const bystander = await app('work');
    try {
      const actions = await signals(client, 'ActionInvoked');
      const closed = await signals(client, 'NotificationClosed');
      const overheard = await signals(bystander, 'ActionInvoked');
      const id = await notify(client, { summary: 'Meeting at 3', actions: ['default', 'Open', 'reply-now', 'Reply'] });
      await expect.poll(() => dunst.displayed(), { timeout: 10_000 }).toBe(1);
      await dunst.action(0); // the default action: a click on the notification
      await expect.poll(() => actions.seen, { timeout: 10_000 }).toContainEqual([id, 'default']);

      const id2 = await notify(client, { summary: 'Second meeting', actions: ['default', 'Open', 'reply-now', 'Reply'] });
      expect(id2).not.toBe(id);
      await expect.poll(() => dunst.displayed(), { timeout: 10_000 }).toBeGreaterThan(0);
      await dunst.pick('#Reply ([Work] Second meeting)');
      await expect.poll(() => actions.seen, { timeout: 10_000 }).toContainEqual([id2, 'reply-now']);

      // The user dismisses what is left: the app hears that its notification closed (2: dismissed by the user).
      await dunst.closeAll();
      await expect.poll(() => closed.seen.map(([i]) => i), { timeout: 10_000 }).toContain(id2);
      expect(closed.seen.find(([i]) => i === id2)?.[1]).toBe(2);
      // Another app on the same VM hears nothing of it.
      expect(overheard.seen).toEqual([]);
      await Promise.all([actions.stop(), closed.stop(), overheard.stop()]);
    } finally {
      client.close();
      bystander.close();
    }
  });

  it('a Flatpak app\'s notification through the guest\'s stock portal reaches the host with its app id, and its button comes back with its target', async () => {
    const sandboxed = await flatpakApp('work', FLATPAK_APP, {
      id: 'build-7',
      title: 'Build done',
      body: 'All <b>42</b> tests passed',
      defaultAction: 'app.open',
      button: { label: 'Snooze', action: 'app.snooze', target: 10 },
    });
    try {
      await expect.poll(() => sandboxed.lines, { timeout: 20_000 }).toContainEqual({ added: 'build-7' });
      await expect.poll(() => dunst.displayed(), { timeout: 10_000 }).toBeGreaterThan(0);
      await dunst.pick('#Snooze ([Work] Build done)');
      await expect.poll(() => sandboxed.lines, { timeout: 10_000 }).toContainEqual({ action: ['build-7', 'app.snooze', [10]] });
      const [shown] = await seenOnHost('Build done');
      expect(shown).toMatchObject({ appname: `Work: ${FLATPAK_APP}`, summary: '[Work] Build done', body: 'All &lt;b&gt;42&lt;/b&gt; tests passed' });
      expect(auditLines()).toContainEqual(expect.objectContaining({ vm: 'work', portal: 'Notification' }));
    } finally {
      await sandboxed.stop();
    }
  });

  it('a deny row stops a VM\'s notifications: the app gets a clear error, and nothing shows on the host', async () => {
    // One kind only: shop's libnotify apps are refused by the host, with the reason.
    await world.cli(['permissions', 'set', 'shop', 'Notification', 'deny', 'libnotify']);
    const client = await app('shop');
    try {
      const before = (await dunst.history()).length;
      const err = await notify(client, { summary: 'Deal of the day' }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(BusCallError);
      expect((err as BusCallError).errorName).toBe('org.freedesktop.portal.Error.NotAllowed');
      expect((err as BusCallError).message).toMatch(/the host's policy does not show notifications from VM shop/);
      expect(await seenOnHost('Deal of the day')).toEqual([]);
      expect((await dunst.history()).length).toBe(before);
      expect(auditLines()).toContainEqual(expect.objectContaining({ vm: 'shop', portal: 'Notification', decision: 'deny', reason: 'policy', rule: 'Notification libnotify shop deny', asked: { kind: 'libnotify' } }));
    } finally {
      client.close();
      await world.cli(['permissions', 'reset', 'shop']);
    }

    // The whole portal: lab is no longer served it, so its guest gives up the libnotify name and the portal interface.
    await world.cli(['permissions', 'set', 'lab', 'Notification', 'deny']);
    await expect.poll(() => world.guestExports('lab'), { timeout: 10_000 }).not.toContain(PORTAL_NOTIFICATION);
    await expect.poll(() => ownerOn('lab'), { timeout: 10_000 }).toBeUndefined();
    const labClient = await app('lab');
    try {
      await expect(notify(labClient, { summary: 'From the lab' })).rejects.toThrow(/ServiceUnknown|not provided by any \.service/);
    } finally {
      labClient.close();
    }
    expect(await seenOnHost('From the lab')).toEqual([]);
    expect(auditLines()).toContainEqual(expect.objectContaining({ vm: 'lab', portal: 'Notification', request: 'served portals', decision: 'deny', rule: 'Notification * lab deny' }));
  });

  it('a flood from VM work is refused past its rate limit and counted, while VM shop still notifies', async () => {
    const client = await app('work');
    const shopClient = await app('shop');
    try {
      await expect.poll(() => ownerOn('shop'), { timeout: 10_000 }).toBeTruthy();
      const results = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => notify(client, { summary: `Flood ${i}` })));
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      const shown = results.length - refused.length;
      console.log(`notification: a flood of ${results.length}: ${shown} shown, ${refused.length} refused`);
      expect(shown).toBeGreaterThan(0);
      expect(refused.length).toBeGreaterThan(0);
      for (const r of refused) expect(String((r.reason as Error).message)).toMatch(/too many notifications from VM work: the host shows 10 at once, then 1 a second/);

      const id = await notify(shopClient, { summary: 'Shop is fine' });
      expect(id).toBeGreaterThan(0);
      const [fromShop] = await seenOnHost('Shop is fine');
      expect(fromShop).toMatchObject({ appname: 'Shop: mail', summary: '[Shop] Shop is fine' });
      expect((await dunst.history()).filter((e) => e.summary.startsWith('[Work] Flood ')).length).toBe(shown);

      // One line when the burst of refusals started, not one per refusal (its count follows once it has been quiet).
      const floods = auditLines().filter((l) => l.vm === 'work' && l.portal === 'Notification' && l.reason === 'flood');
      expect(floods).toEqual([expect.objectContaining({ decision: 'deny', grant: null, flood: { phase: 'start', refused: 1 }, asked: { kind: 'libnotify', burst: 10, perSecond: 1 } })]);
    } finally {
      client.close();
      shopClient.close();
    }
  });
});

/**
 * An app the guest's frontend takes for a Flatpak app: xdg-desktop-portal
 * 1.16 reads /proc/PID/root/.flatpak-info for the caller and takes its
 * [Application] name as the app id, which a bubblewrap root with that file
 * gives it, as `flatpak run` does. It adds one notification through
 * org.freedesktop.portal.Notification and prints, one JSON line each, that
 * it did and every ActionInvoked it gets from the frontend.
 */
async function flatpakApp(
  vm: string,
  appId: string,
  n: { id: string; title: string; body: string; defaultAction: string; button: { label: string; action: string; target: number } },
): Promise<{ lines: unknown[]; stop: () => Promise<void> }> {
  const dir = world.hostDir(path.join(world.root, 'flatpak', appId));
  const info = path.join(dir, 'flatpak-info');
  writeFileSync(info, `[Application]\nname=${appId}\nruntime=runtime/org.freedesktop.Platform/x86_64/23.08\n\n[Instance]\ninstance-id=1000000002\nflatpak-version=1.14.10\n`);
  mkdirSync(path.join(dir, 'tmp'), { recursive: true });
  world.own(dir);
  const root = packageRoot();
  const socket = /^unix:path=(.+)$/.exec(world.guest(vm).bus.address)![1]!;
  const script = `
    import { Bus, variant } from ${JSON.stringify(path.join(root, 'dist', 'src', 'dbus', 'bus.js'))};
    const n = JSON.parse(process.env.NOTE);
    const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
    const bus = await Bus.connect(process.env.DBUS_SESSION_BUS_ADDRESS);
    const D = { destination: 'org.freedesktop.portal.Desktop', path: '/org/freedesktop/portal/desktop' };
    await bus.call({ ...D, interface: 'org.freedesktop.DBus.Properties', member: 'Get', signature: 'ss', body: ['org.freedesktop.portal.Notification', 'version'], timeoutMs: 20000 });
    const owner = await bus.nameOwner(D.destination);
    await bus.subscribe({ sender: owner, path: D.path, interface: 'org.freedesktop.portal.Notification', member: 'ActionInvoked' }, ([id, action, param]) =>
      say({ action: [id, action, param.map((v) => v.value)] }));
    await bus.call({ ...D, interface: 'org.freedesktop.portal.Notification', member: 'AddNotification', signature: 'sa{sv}', timeoutMs: 20000, body: [n.id, {
      title: variant('s', n.title),
      body: variant('s', n.body),
      'default-action': variant('s', n.defaultAction),
      buttons: variant('aa{sv}', [{ label: variant('s', n.button.label), action: variant('s', n.button.action), target: variant('u', n.button.target) }]),
    }] });
    say({ added: n.id });
    setInterval(() => {}, 1 << 30);
  `;
  const merged = ['bin', 'sbin', 'lib', 'lib64'].filter((d) => existsSync(`/${d}`)).flatMap((d) => ['--symlink', `usr/${d}`, `/${d}`]);
  const args = [
    '--unshare-pid', '--die-with-parent',
    '--ro-bind', '/usr', '/usr', ...merged,
    '--ro-bind', '/etc', '/etc',
    '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp',
    '--ro-bind', root, root,
    '--ro-bind', info, '/.flatpak-info',
    '--bind', socket, '/run/flatpak/bus',
    '--clearenv',
    '--setenv', 'PATH', '/usr/bin:/bin',
    '--setenv', 'HOME', '/tmp',
    '--setenv', 'DBUS_SESSION_BUS_ADDRESS', 'unix:path=/run/flatpak/bus',
    '--setenv', 'FLATPAK_ID', appId,
    '--setenv', 'NOTE', JSON.stringify(n),
    '--', process.execPath, '--input-type=module', '-e', script,
  ];
  const lines: unknown[] = [];
  // As the guest session's user (this process's, as World starts guests): the frontend must read the app's /proc/PID/root.
  const service: Service = startService(`flatpak app ${appId}`, testProgram('bwrap', 'bubblewrap'), args, {
    env: {},
    onStdoutLine: (l) => {
      try {
        lines.push(JSON.parse(l) as unknown);
      } catch {
        lines.push({ unparsed: l });
      }
    },
  });
  return { lines, stop: async () => void (await service.stop()) };
}
