import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { packageRoot } from '../../src/paths.js';
import { Screen } from '../helpers/screen.js';
import { World, type DialogReply } from '../../src/testbed/world.js';
import { waitForWindow } from '../helpers/x11.js';
import { startXvfb, type Xvfb } from '../helpers/xvfb.js';

/**
 * The host dialog a user really gets: Debian's xdg-desktop-portal-gtk 1.14
 * under Xvfb, registered by its own gtk.portal (UseIn=gnome) in a session
 * with XDG_CURRENT_DESKTOP=GNOME, so the stock host frontend would pick it
 * and our daemon, reading the frontend's rules, calls it directly for
 * OpenFile. Only the human is faked: xdotool keystrokes. What the human sees
 * is read back from screenshots with tesseract; they are kept in
 * test-results/real-dialog/.
 */
const results = path.join(packageRoot(), 'test-results', 'real-dialog');
// A dialog that has just mapped may not take keys yet.
const SETTLE_MS = 800;
let x: Xvfb;
let screen: Screen;

beforeAll(async () => {
  for (const tool of ['xdotool', 'xwininfo', 'import', 'convert', 'tesseract', 'gjs'] as const) requireProgram(tool);
  mkdirSync(results, { recursive: true });
  // Tall enough for GTK's default file dialog (about 1100×900) and its "Open files read-only" row.
  x = await startXvfb({ screen: '1600x1200x24' });
  screen = new Screen(x.display);
});
afterAll(async () => {
  await x?.stop();
});

/**
 * Every app's request of a test, so that a test that fails with its dialog
 * still up closes it (the app gives up, its portal closes the host dialog)
 * instead of leaving it on top of the next test's.
 */
const inFlight: { abort: AbortController; done: Promise<unknown> }[] = [];
function track<T>(start: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const abort = new AbortController();
  const done = start(abort.signal);
  inFlight.push({ abort, done: done.catch(() => undefined) });
  return done;
}
afterEach(async () => {
  for (const r of inFlight) r.abort.abort();
  await Promise.all(inFlight.splice(0).map((r) => r.done));
});

/** The dialog with this title, once it takes keys, and a screenshot of it with the text of its header bar. */
async function dialog(title: string, shotName: string): Promise<{ id: string; header: string; shot: string; box: { x: number; y: number; width: number; height: number } }> {
  const id = await waitForWindow(x.display, title, 30_000);
  await sleep(SETTLE_MS);
  const shot = path.join(results, `${shotName}.png`);
  await screen.screenshot(shot);
  const box = await screen.geometry(id);
  // The header bar: the title (or the Name entry) between Cancel and the accept button.
  const header = await screen.read(shot, { ...box, height: 52 }, path.join(results, `${shotName}-header.png`));
  console.log(`${shotName}: ${shot}\n  header bar reads: ${JSON.stringify(header)}`);
  return { id, header, shot, box };
}

/**
 * What a user does to pick a file by name: open the entry (ctrl+L opens the
 * location entry; ctrl+A selects all of the Name entry), type, Return. The
 * pauses let GTK show the entry and finish completing the typed name, which
 * it does asynchronously; a Return before that does not accept the dialog.
 */
async function typePath(windowId: string, file: string, openEntry: string): Promise<void> {
  await screen.keys(windowId, openEntry);
  await sleep(300);
  await screen.type(windowId, file);
  await sleep(500);
  await screen.screenshot(path.join(results, `typed-${path.basename(file)}.png`));
  await screen.keys(windowId, 'Return');
}

const uriOf = (r: DialogReply) => (r.results.uris?.value as string[] | undefined)?.[0];

describe('xdg-desktop-portal-gtk with GNOME\'s header bars', () => {
  let world: World;
  let alice: string;

  beforeAll(async () => {
    world = await World.start([{ name: 'work', label: 'Work' }], { gtkDialog: { display: x.display, headerBars: true } });
    alice = path.join(world.root, 'alice');
    mkdirSync(alice);
  });
  afterAll(async () => {
    await world?.stop();
  });

  /** An ordinary GTK 3 app in the guest: Gtk.FileChooserNative through the guest's portal (test/fixtures/gtk3-file-chooser.js). */
  function guestGtkApp(args: string[]): Promise<Record<string, string>> {
    return track((signal) =>
      runProgram(requireProgram('gjs'), [path.join(packageRoot(), 'test', 'fixtures', 'gtk3-file-chooser.js'), ...args], {
        env: { ...world.guest('work').bus.env, DISPLAY: x.display, GTK_USE_PORTAL: '1', NO_AT_BRIDGE: '1' },
        timeoutMs: 55_000,
        signal,
      }).then(({ stdout }) => JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, string>),
    );
  }

  /** An app that is a plain D-Bus client of the guest's portal, and then reads and writes the file itself. */
  const guestApp = (method: 'OpenFile' | 'SaveFile', title: string) => track((signal) => world.fileDialog('work', method, title, {}, signal));

  it('OpenFile: the title and the Open button name the VM; a typed path opens in the guest app', async () => {
    const host = path.join(alice, 'report.txt');
    writeFileSync(host, 'numbers from the host');
    const app = guestGtkApp(['open']);
    const shown = await dialog('Work: Open Report', 'open');
    expect(shown.header).toContain('Work: Open Report');
    expect(shown.header).toContain('Open (Work)');

    await typePath(shown.id, host, 'ctrl+l');
    const out = await app;
    expect(out).toMatchObject({ response: 'accept', contents: 'numbers from the host' });
    expect(out.path!.startsWith(`${world.guest('work').mount}/`)).toBe(true);
  }, 60_000);

  it('OpenFile: with "Open files read-only" left unticked, the VM may write the file', async () => {
    const host = path.join(alice, 'draft.txt');
    writeFileSync(host, 'first draft');
    const reply = guestApp('OpenFile', 'Edit Draft');
    const shown = await dialog('Work: Edit Draft', 'open-writable');
    await typePath(shown.id, host, 'ctrl+l');
    const uri = uriOf(await reply);
    expect(readFileSync(fileURLToPath(uri!), 'utf8')).toBe('first draft');
    writeFileSync(fileURLToPath(uri!), 'second draft, from the VM');
    expect(readFileSync(host, 'utf8')).toBe('second draft, from the VM');
  }, 60_000);

  it('OpenFile: with "Open files read-only" ticked, the VM may read the file but not write it', async () => {
    const host = path.join(alice, 'contract.txt');
    writeFileSync(host, 'signed');
    const reply = guestApp('OpenFile', 'Read Contract');
    const shown = await dialog('Work: Read Contract', 'open-read-only');
    // From where the dialog puts the focus, the checkbox is the next stop.
    await screen.keys(shown.id, 'Tab', 'space');
    await sleep(300);
    const ticked = path.join(results, 'open-read-only-ticked.png');
    await screen.screenshot(ticked);
    const row = await screen.read(ticked, { x: shown.box.x, y: shown.box.y + shown.box.height - 40, width: 420, height: 40 }, path.join(results, 'open-read-only-row.png'), { scale: 300 });
    expect(row).toContain('Open files read-only');
    await typePath(shown.id, host, 'ctrl+l');
    const uri = uriOf(await reply);
    expect(readFileSync(fileURLToPath(uri!), 'utf8')).toBe('signed');
    expect(() => writeFileSync(fileURLToPath(uri!), 'forged')).toThrow(/EACCES|EPERM|EROFS/);
    expect(readFileSync(host, 'utf8')).toBe('signed');
  }, 60_000);

  it('SaveFile: the Name entry takes the title\'s place, the Save button still names the VM, and the app\'s bytes land on the host', async () => {
    const target = path.join(alice, 'minutes.txt');
    const app = guestGtkApp(['save', 'minutes of the meeting']);
    const shown = await dialog('Work: Save Minutes', 'save');
    // With header bars the title is not shown at all: only the button says who is asking.
    expect(shown.header).not.toContain('Save Minutes');
    expect(shown.header).toContain('Name');
    expect(shown.header).toContain('Save (Work)');

    // The Name entry has the focus, with "minutes" selected: replace it with a path.
    await typePath(shown.id, target, 'ctrl+a');
    const out = await app;
    expect(out).toMatchObject({ response: 'accept' });
    expect(out.error).toBeUndefined();
    expect(readFileSync(target, 'utf8')).toBe('minutes of the meeting');
  }, 60_000);

  it('a Close from the guest takes the real dialog off the screen', async () => {
    const ac = new AbortController();
    const reply = world.fileDialog('work', 'OpenFile', 'Never Mind', {}, ac.signal);
    await waitForWindow(x.display, 'Work: Never Mind', 30_000);
    ac.abort();
    await screen.windowGone('Work: Never Mind');
    expect((await reply).response).not.toBe(0);
  }, 60_000);
});

describe('xdg-desktop-portal-gtk with classic dialogs (no header bars)', () => {
  let world: World;

  beforeAll(async () => {
    world = await World.start([{ name: 'work', label: 'Work' }], { gtkDialog: { display: x.display, headerBars: false } });
  });
  afterAll(async () => {
    await world?.stop();
  });

  it('the Save button names the VM here too, where the title is the window manager\'s to draw', async () => {
    const reply = track((signal) => world.fileDialog('work', 'SaveFile', 'Save Minutes', {}, signal));
    const id = await waitForWindow(x.display, 'Work: Save Minutes', 30_000);
    await sleep(SETTLE_MS);
    const shot = path.join(results, 'save-classic.png');
    await screen.screenshot(shot);
    const box = await screen.geometry(id);
    // The buttons sit at the bottom right.
    const buttons = await screen.read(shot, { x: box.x + box.width - 420, y: box.y + box.height - 60, width: 420, height: 60 }, path.join(results, 'save-classic-buttons.png'));
    console.log(`save-classic: ${shot}\n  buttons read: ${JSON.stringify(buttons)}`);
    expect(buttons).toContain('Save (Work)');
    await screen.keys(id, 'Escape');
    expect((await reply).response).not.toBe(0);
  }, 60_000);
});
