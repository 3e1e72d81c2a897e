import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { packageRoot } from '../../src/paths.js';
import { World } from '../../src/testbed/world.js';
import { startXvfb, type Xvfb } from '../helpers/xvfb.js';

/**
 * A real app: GTK 3's own native file chooser (Gtk.FileChooserNative) in a
 * gjs program on the guest bus, under Xvfb, with GTK_USE_PORTAL=1 as our
 * guest install sets it. Nothing in the app knows about VMs.
 */
let world: World;
let x: Xvfb;

beforeAll(async () => {
  x = await startXvfb();
  world = await World.start([{ name: 'work', label: 'Work' }]);
});
afterAll(async () => {
  await world?.stop();
  await x?.stop();
});

async function runApp(args: string[]): Promise<Record<string, string>> {
  const guest = world.guest('work');
  const { stdout } = await runProgram(requireProgram('gjs'), [path.join(packageRoot(), 'test', 'fixtures', 'gtk3-file-chooser.js'), ...args], {
    env: { ...guest.bus.env, DISPLAY: x.display, GTK_USE_PORTAL: '1', NO_AT_BRIDGE: '1' },
    timeoutMs: 45_000,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, string>;
}

describe('GTK native file chooser in the guest', () => {
  it('opens a host file chosen in the host dialog and reads its bytes', async () => {
    const dir = path.join(world.root, 'alice');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'report.txt'), 'numbers from the host');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${dir}/report.txt`] }));
    const out = await runApp(['open']);
    expect(out).toMatchObject({ response: 'accept', contents: 'numbers from the host' });
    expect(out.path!.startsWith(`${world.guest('work').mount}/`)).toBe(true);
    const call = world.dialog.calls.at(-1)!;
    expect(call.title).toBe('Work: Open Report');
    expect(call.options).toMatchObject({ accept_label: '_Open (Work)', filters: [['Text files', [[0, '*.txt']]]] });
  });

  it('saves through the host dialog into a host file', async () => {
    const target = path.join(world.root, 'alice', 'minutes.txt');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${target}`] }));
    const out = await runApp(['save', 'minutes of the meeting']);
    expect(out).toMatchObject({ response: 'accept' });
    expect(out.error).toBeUndefined();
    expect(world.dialog.calls.at(-1)).toMatchObject({ method: 'SaveFile', title: 'Work: Save Minutes', options: { current_name: 'minutes.txt' } });
    expect(readFileSync(target, 'utf8')).toBe('minutes of the meeting');
  });

  it('a cancel in the host dialog is a cancel in the app', async () => {
    world.dialog.behave(() => ({ response: 1 }));
    expect(await runApp(['open'])).toEqual({ response: 'cancel' });
  });
});
