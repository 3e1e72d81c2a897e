import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus } from '../../src/dbus/bus.js';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { packageRoot } from '../../src/paths.js';
import type { DialogCall, User } from '../../src/testbed/scripted-dialog.js';
import { World } from '../../src/testbed/world.js';
import { startXvfb, type Xvfb } from '../helpers/xvfb.js';

/**
 * A real Qt app: PyQt5's QFileDialog static functions in a guest session,
 * under Xvfb, with QT_QPA_PLATFORMTHEME=xdgdesktopportal (Debian's
 * qt5-xdgdesktopportal-platformtheme 5.15.8). Nothing in the app knows about
 * VMs. test/fixtures/qt-file-dialog.py is the app.
 *
 * What Qt 5.15 sends to org.freedesktop.portal.FileChooser, seen on the guest
 * bus with dbus-monitor (the guest's stock frontend passes all of it but
 * handle_token on to our backend, and for SaveFile also drops multiple and
 * directory):
 *
 * - OpenFile (getOpenFileName(None, 'Open', '', 'Text files (*.txt);;All files (*)')):
 *   parent "x11:0", title "Open", options
 *   `directory: false`, `filters: [("Text files ", [(0, "*.txt")]), ("All files ", [(0, "*")])]`,
 *   `handle_token: "qt<digits>"`, `modal: true`, `multiple: false`.
 *   The filter names keep the space before "(": Qt splits "Text files (*.txt)"
 *   with a regexp whose first group is `^(.*)\(`. No accept_label, and no
 *   current_filter unless the app names an initial filter.
 * - SaveFile (getSaveFileName(None, 'Save', '<guest HOME>/report.txt', filters, 'Text files (*.txt)')):
 *   the same filters, `current_filter: ("Text files ", [(0, "*.txt")])`,
 *   `current_folder: b"<guest HOME>\0"`, `current_file: b"<guest HOME>/report.txt\0"`,
 *   `directory: false`, `handle_token`, `modal: true`, `multiple: false`.
 *   No current_name: the suggested name exists only inside current_file.
 *   When the suggested folder does not exist (say /home/user/report.txt on a
 *   machine without /home/user), Qt puts its working directory there instead:
 *   `current_folder: b"<cwd>\0"`, `current_file: b"<cwd>/report.txt\0"`.
 * - The answer: Qt takes `uris` and looks `current_filter`'s name up among
 *   the names it sent, exactly; "Text files" (no trailing space) matches
 *   nothing, and the app's selected filter comes back empty.
 * - Qt 5 subscribes to the request's Response signal only after the
 *   OpenFile/SaveFile reply has arrived (it does not use the handle_token
 *   path up front). A Response sent before that is lost and the app waits in
 *   QDialog::exec forever. No human answers a dialog in the few milliseconds
 *   that takes, but a script does, so the scripted user here first waits
 *   until the app's match rule for Response is on the guest bus.
 */
let world: World;
let x: Xvfb;
let guestBus: Bus;

const FIXTURE = path.join(packageRoot(), 'test', 'fixtures', 'qt-file-dialog.py');
const REQUEST_PATH = '/org/freedesktop/portal/desktop/request/';

beforeAll(async () => {
  x = await startXvfb();
  world = await World.start([{ name: 'work', label: 'Work' }]);
  guestBus = await Bus.connect(world.guest('work').bus.address);
});
afterAll(async () => {
  guestBus?.close();
  await world?.stop();
  await x?.stop();
});

interface QtOutput {
  response: 'accept' | 'cancel';
  path: string;
  filter: string;
  contents?: string;
  error?: string;
}

async function runApp(args: string[]): Promise<QtOutput> {
  const guest = world.guest('work');
  const { stdout } = await runProgram(requireProgram('python3'), [FIXTURE, ...args], {
    env: { ...guest.bus.env, DISPLAY: x.display, QT_QPA_PLATFORMTHEME: 'xdgdesktopportal', NO_AT_BRIDGE: '1', QT_ACCESSIBILITY: '0' },
    cwd: guest.bus.env.HOME,
    timeoutMs: 45_000,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as QtOutput;
}

/** Resolves once some app on the guest bus listens for a portal Request's Response. */
async function appListensForResponse(timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [rules] = (await guestBus.call({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus.Debug.Stats',
      member: 'GetAllMatchRules',
    })) as [Record<string, string[]>];
    const listening = Object.values(rules)
      .flat()
      .some((r) => r.includes("member='Response'") && r.includes("interface='org.freedesktop.portal.Request'") && r.includes(REQUEST_PATH));
    if (listening) return;
    if (Date.now() > deadline) throw new Error('the app never subscribed to its Response signal');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A user who, like any human, answers only once the app is ready to hear it. */
function human(answer: User): User {
  return async (call) => {
    await appListensForResponse();
    return answer(call);
  };
}

type Filter = [string, [number, string][]];

/** The filter the user picks in the dialog: one of those it was shown, as shown. */
function shownFilter(call: DialogCall, startsWith: string): Filter {
  const filters = (call.options.filters ?? []) as Filter[];
  const f = filters.find(([name]) => name.startsWith(startsWith));
  if (!f) throw new Error(`the dialog showed no filter like "${startsWith}…": ${JSON.stringify(filters)}`);
  return f;
}

describe('Qt file dialog (xdgdesktopportal platform theme) in the guest', () => {
  it('opens a host file and gets back the filter it offered', async () => {
    const dir = path.join(world.root, 'alice');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'notes.txt'), 'figures from the host\n');
    world.dialog.behave(human((call) => ({ response: 0, uris: [`file://${dir}/notes.txt`], current_filter: shownFilter(call, 'Text files') })));

    const out = await runApp(['open']);

    const call = world.dialog.calls.at(-1)!;
    expect(call.method).toBe('OpenFile');
    expect(call.title).toBe('Work: Open');
    // The user sees the names cleaned; what the app gets back is its own.
    expect(call.options.filters).toEqual([
      ['Text files', [[0, '*.txt']]],
      ['All files', [[0, '*']]],
    ]);
    expect(out.error).toBeUndefined();
    expect(out.response).toBe('accept');
    expect(out.path.startsWith(`${world.guest('work').mount}/`)).toBe(true);
    expect(path.basename(out.path)).toBe('notes.txt');
    expect(out.contents).toBe('figures from the host\n');
    expect(out.filter).toBe('Text files (*.txt)');
  });

  it('saves into a host file under the name the app suggested, and gets back the filter it offered', async () => {
    const dir = path.join(world.root, 'alice');
    mkdirSync(dir, { recursive: true });
    const target = path.join(dir, 'report-final.txt');
    const suggested = path.join(world.guest('work').bus.env.HOME!, 'report.txt');
    world.dialog.behave(human((call) => ({ response: 0, uris: [`file://${target}`], current_filter: shownFilter(call, 'All files') })));

    const out = await runApp(['save', suggested, 'quarterly report, saved from the VM\n']);

    const call = world.dialog.calls.at(-1)!;
    expect(call.method).toBe('SaveFile');
    expect(call.title).toBe('Work: Save');
    // Qt put the suggested name only in current_file, a guest path: the path
    // is dropped, its basename is the suggested name.
    expect(call.options.current_name).toBe('report.txt');
    expect(call.options).not.toHaveProperty('current_file');
    expect(call.options).not.toHaveProperty('current_folder');
    for (const v of Object.values(call.options)) expect(JSON.stringify(v)).not.toContain(world.guest('work').bus.env.HOME!);
    expect(call.options.current_filter).toEqual(['Text files', [[0, '*.txt']]]);
    expect(out.error).toBeUndefined();
    expect(out.response).toBe('accept');
    expect(out.path.startsWith(`${world.guest('work').mount}/`)).toBe(true);
    expect(path.basename(out.path)).toBe('report-final.txt');
    expect(readFileSync(target, 'utf8')).toBe('quarterly report, saved from the VM\n');
    expect(out.filter).toBe('All files (*)');
  });

  it('a cancel in the host dialog is a cancel in the app', async () => {
    world.dialog.behave(human(() => ({ response: 1 })));
    const out = await runApp(['open']);
    expect(out).toEqual({ response: 'cancel', path: '', filter: '' });
  });
});
