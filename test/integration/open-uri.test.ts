import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPEN_ON_HOST_DESKTOP_ID, OPEN_URI_INTERFACE, OPEN_URI_PATH } from '../../portals/open-uri/handler.js';
import { Bus } from '../../src/dbus/bus.js';
import { parseInterfaces } from '../../src/dbus/interfaces.js';
import { requireProgram } from '../../src/deps.js';
import { ExecError, runProgram } from '../../src/exec.js';
import { BACKEND_BUS_NAME } from '../../src/guest/backend.js';
import { cliEntry } from '../../src/paths.js';
import { World } from '../../src/testbed/world.js';
import { pressKeys, waitForWindow } from '../helpers/x11.js';
import { startXvfb, type Xvfb } from '../helpers/xvfb.js';

/**
 * Links from a VM, end to end: `xdp-vm open-uri` in VM work (what the
 * "Open on host" handler runs) calls our guest backend on work's bus, which
 * asks the host daemon; the daemon applies the OpenURI rows and the config's
 * openUri table (here: work's https links open in VM shop, the rest on the
 * host), shows the GJS consent dialog on Xvfb when it asks, and then opens.
 *
 * The host side keeps the daemon's real code path: it calls the host's real
 * xdg-desktop-portal, org.freedesktop.portal.OpenURI on
 * org.freedesktop.portal.Desktop, and that frontend runs the host's default
 * handler for the scheme. The "recording handler on the host bus" is that
 * default handler: a desktop file in the host session's data home, set as
 * default in its mimeapps.list, whose Exec appends the URI it was given to a
 * file. The frontend exports OpenURI only when some backend implements
 * org.freedesktop.impl.portal.AppChooser (the test bed's scripted backend
 * implements FileChooser only), so this test adds one: a .portal file for a
 * name it owns, written before the host's frontend first starts. For http,
 * https and mailto with a default handler the frontend skips the chooser,
 * and the test checks that it was never called.
 *
 * VM shop, the target, has "Open on host" as its default https handler (as
 * install-guest leaves it) and a recording browser as another registered
 * one: the link must reach the recorder, never come back through ours.
 */
const HOST_CHOOSER = 'io.github.xdp_vm.test.AppChooser';
const RECORDER_ID = 'xdp-vm-test-recorder.desktop';

let x: Xvfb;
let world: World;
let chooserBus: Bus;
const chooserCalls: unknown[][] = [];
let hostOpened: string;
let shopOpened: string;
let shopLooped: string;

/** A desktop file whose Exec appends its %u to `log`, through a script (no quoting games in Exec). */
function recorder(appsDir: string, id: string, log: string, mimeTypes: string[]): void {
  mkdirSync(appsDir, { recursive: true });
  const script = path.join(appsDir, `${id}.sh`);
  writeFileSync(script, `#!/bin/sh\nprintf '%s\\n' "$1" >> '${log}'\n`);
  chmodSync(script, 0o755);
  writeFileSync(path.join(appsDir, id), `[Desktop Entry]\nType=Application\nName=Recorder\nExec=${script} %u\nMimeType=${mimeTypes.map((t) => `${t};`).join('')}\nNoDisplay=true\n`);
  world.own(appsDir);
}

function lines(file: string): string[] {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
}

function audit(): Record<string, unknown>[] {
  return readFileSync(world.auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.portal === 'OpenURI');
}

/** What "Open on host" runs in VM work: `xdp-vm open-uri URI` against work's session bus. */
function openInWork(uri: string) {
  return runProgram(process.execPath, [cliEntry(), 'open-uri', uri], { env: { ...world.guest('work').bus.env }, timeoutMs: 60_000 });
}

async function refusedInWork(uri: string): Promise<string> {
  const err = (await openInWork(uri).then(() => undefined, (e: unknown) => e)) as ExecError | undefined;
  expect(err, `${uri} was opened`).toBeInstanceOf(ExecError);
  return err!.stderr.trim();
}

/** Start a VM's guest backend (D-Bus activation, as the handler's call would) and wait until it takes links. */
async function guestTakesLinks(vm: string): Promise<void> {
  const bus = await Bus.connect(world.guest(vm).bus.address);
  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const [xml] = await bus.call({ destination: BACKEND_BUS_NAME, path: OPEN_URI_PATH, interface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect', timeoutMs: 20_000 });
      if (String(xml).includes(OPEN_URI_INTERFACE)) return;
      if (Date.now() > deadline) throw new Error(`VM ${vm}'s guest backend does not export ${OPEN_URI_INTERFACE}:\n${world.daemonLog.slice(-20).join('\n')}`);
      await sleep(100);
    }
  } finally {
    bus.close();
  }
}

beforeAll(async () => {
  x = await startXvfb();
  world = await World.start([{ name: 'work', label: 'Work' }, { name: 'shop', label: 'Shop' }], {
    config: { openUri: { work: { https: 'shop' } } },
    daemonEnv: { DISPLAY: x.display, NO_AT_BRIDGE: '1' },
  });

  // The host: an AppChooser backend for the frontend to find, before the frontend first starts.
  chooserBus = await Bus.connect(world.hostBus.address);
  expect(await chooserBus.nameOwner('org.freedesktop.portal.Desktop'), 'the host frontend started before the test could add its AppChooser').toBeUndefined();
  const [chooser] = parseInterfaces(readFileSync('/usr/share/dbus-1/interfaces/org.freedesktop.impl.portal.AppChooser.xml', 'utf8')).filter((i) => i.name === 'org.freedesktop.impl.portal.AppChooser');
  chooserBus.export('/org/freedesktop/portal/desktop', chooser!, {
    ChooseApplication: (args) => (chooserCalls.push(args), [2, {}]),
    UpdateChoices: () => [],
  });
  await chooserBus.requestName(HOST_CHOOSER);
  world.hostFile(path.join(world.root, 'host', 'portals', 'test-appchooser.portal'), `[portal]\nDBusName=${HOST_CHOOSER}\nInterfaces=org.freedesktop.impl.portal.AppChooser;\nUseIn=scripted\n`);

  // The host's default handler for web and mail links: the recorder.
  hostOpened = path.join(world.root, 'host-opened.txt');
  const schemes = ['x-scheme-handler/http', 'x-scheme-handler/https', 'x-scheme-handler/mailto'];
  recorder(path.join(world.hostEnv.XDG_DATA_HOME!, 'applications'), RECORDER_ID, hostOpened, schemes);
  const defaults = schemes.map((t) => `${t}=${RECORDER_ID}`).join('\n');
  world.hostFile(path.join(world.hostEnv.XDG_CONFIG_HOME!, 'mimeapps.list'), `[Default Applications]\n${defaults}\n[Added Associations]\n${schemes.map((t) => `${t}=${RECORDER_ID};`).join('\n')}\n`);

  // VM shop: "Open on host" is its default (install-guest's), a recording browser the other handler.
  const shopDir = path.join(world.root, 'guest', 'shop');
  shopOpened = path.join(shopDir, 'browser-opened.txt');
  shopLooped = path.join(shopDir, 'open-on-host-ran.txt');
  const shopApps = path.join(shopDir, 'data', 'applications');
  recorder(shopApps, RECORDER_ID, shopOpened, schemes);
  recorder(shopApps, OPEN_ON_HOST_DESKTOP_ID, shopLooped, schemes);
  writeFileSync(path.join(shopDir, 'config', 'mimeapps.list'), `[Default Applications]\n${schemes.map((t) => `${t}=${OPEN_ON_HOST_DESKTOP_ID}`).join('\n')}\n[Added Associations]\n${schemes.map((t) => `${t}=${RECORDER_ID};`).join('\n')}\n`);

  await guestTakesLinks('work');
  await guestTakesLinks('shop');
}, 120_000);

afterAll(async () => {
  chooserBus?.close();
  await world?.stop();
  await x?.stop();
});

describe('links from a VM', () => {
  it('an allowed link from work opens on the host, through the host\'s OpenURI portal and its default handler', async () => {
    await world.cli(['permissions', 'set', 'work', 'OpenURI', 'allow', 'http']);
    const { stdout } = await openInWork('http://news.example.org/today?session=s3cr3t');
    expect(stdout.trim()).toBe('opened news.example.org on the host');
    await expect.poll(() => lines(hostOpened), { timeout: 15_000 }).toEqual(['http://news.example.org/today?session=s3cr3t']);
    expect(chooserCalls).toEqual([]);
    expect(audit()).toContainEqual(expect.objectContaining({ vm: 'work', decision: 'allow', reason: 'policy', rule: 'OpenURI http work allow' }));
    expect(audit()).toContainEqual(expect.objectContaining({ vm: 'work', decision: 'allow', asked: { scheme: 'http', host: 'news.example.org', target: 'host', opened: 'host' } }));
  });

  it('a deny row stops it: nothing opens, and the VM is told why', async () => {
    await world.cli(['permissions', 'set', 'work', 'OpenURI', 'deny', 'http']);
    const before = lines(hostOpened).length;
    expect(await refusedInWork('http://news.example.org/again')).toBe('xdp-vm: not opened: a policy row refuses http links from this VM (xdp-vm permissions on the host)');
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'deny', reason: 'policy', rule: 'OpenURI http work deny' });
    await sleep(500); // a handler the portal had started would have written by now
    expect(lines(hostOpened)).toHaveLength(before);
  });

  it('refuses what is not a web or mail link before it leaves the VM, in the CLI and in the backend any app may call', async () => {
    expect(await refusedInWork('file:///etc/passwd')).toMatch(/not opened: "file:" links are never opened; only http, https, mailto links cross/);
    expect(await refusedInWork('https://www.bank.example@evil.example/')).toMatch(/user name or password before its host/);
    // Past our CLI, straight on the backend's D-Bus method, as any app in the VM could call it.
    const app = await Bus.connect(world.guest('work').bus.address);
    try {
      await expect(app.call({ destination: BACKEND_BUS_NAME, path: OPEN_URI_PATH, interface: OPEN_URI_INTERFACE, member: 'OpenURI', signature: 's', body: ['javascript:alert(1)'], timeoutMs: 20_000 })).rejects.toThrow(/InvalidArgument.*"javascript:" links are never opened/);
    } finally {
      app.close();
    }
  });

  it('with the config\'s target shop, an https link from work is launched in shop by shop\'s own handler', async () => {
    await world.cli(['permissions', 'set', 'work', 'OpenURI', 'allow', 'https']);
    const { stdout } = await openInWork('https://shop.example.com/cart?item=7');
    expect(stdout.trim()).toBe('opened shop.example.com on VM shop');
    await expect.poll(() => lines(shopOpened), { timeout: 15_000 }).toEqual(['https://shop.example.com/cart?item=7']);
    // Not through shop's "Open on host", which would have sent it back.
    expect(existsSync(shopLooped)).toBe(false);
    expect(lines(hostOpened)).not.toContain('https://shop.example.com/cart?item=7');
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'allow', asked: { scheme: 'https', host: 'shop.example.com', target: 'shop', opened: 'vm' } });
  });

  it('ask shows the consent dialog naming the site and where it opens; allowing once opens it', async () => {
    await world.cli(['permissions', 'set', 'work', 'OpenURI', 'ask', 'http']);
    const opening = openInWork('http://docs.example.net/guide#intro');
    opening.catch(() => undefined); // awaited below; a failed assertion before then must not leave it unhandled
    const win = await waitForWindow(x.display, 'Permission request from Work');
    await sleep(1000); // past the dialog's arming delay, and painted
    // What the user sees, read back by OCR: the root window (a window's own contents are not kept without a compositor), cut to the dialog.
    const onDisplay = { env: { DISPLAY: x.display }, timeoutMs: 30_000 };
    const shot = path.join(world.root, 'screen.png');
    await runProgram(requireProgram('import'), ['-window', 'root', `png24:${shot}`], onDisplay);
    const geometry = (await runProgram(requireProgram('xwininfo'), ['-id', win], onDisplay)).stdout;
    const num = (name: string) => Number(new RegExp(`${name}:\\s+(-?\\d+)`).exec(geometry)?.[1]);
    const dialog = path.join(world.root, 'open-uri-dialog.png');
    await runProgram(requireProgram('convert'), [shot, '-crop', `${num('Width')}x${num('Height')}+${num('Absolute upper-left X')}+${num('Absolute upper-left Y')}`, '+repage', '-resize', '200%', dialog], onDisplay);
    const text = (await runProgram(requireProgram('tesseract'), [dialog, 'stdout', '--psm', '3'], onDisplay)).stdout;
    // OCR may read a gap between a label and its value as "_".
    expect(text).toMatch(/Site[\s_]+docs\.example\.net/);
    expect(text).toMatch(/Opens in[\s_]+the host/);
    expect(text).toContain('http://docs.example.net/guide#intro');
    await pressKeys(x.display, win, 'Tab', 'Return'); // Deny → Allow once
    expect((await opening).stdout.trim()).toBe('opened docs.example.net on the host');
    await expect.poll(() => lines(hostOpened), { timeout: 15_000 }).toContain('http://docs.example.net/guide#intro');
    const asked = audit().filter((l) => (l.asked as Record<string, unknown> | undefined)?.via === 'gui');
    expect(asked.at(-1)).toMatchObject({ vm: 'work', decision: 'allow', reason: 'user', asked: { summary: 'Work wants to open a link to docs.example.net on the host', arg: 'http', via: 'gui', always: false } });
  });

  it('audits scheme, host and target, never a link\'s path or query', () => {
    const all = JSON.stringify(audit());
    for (const secret of ['s3cr3t', '/today', 'cart?item', 'guide#intro']) expect(all).not.toContain(secret);
  });

  it('when the target VM is not running, the link is not opened and the VM is told so, with no dialog', async () => {
    await world.guest('shop').bus.stop();
    await expect.poll(async () => refusedInWork('https://shop.example.com/later'), { timeout: 20_000 }).toBe('xdp-vm: not opened: VM shop is not running: links from this VM open there, so this one was not opened');
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'error', reason: 'failure', asked: expect.objectContaining({ target: 'shop' }) });
  });
});
