import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PORTALS } from '../../portals/index.js';
import { World } from '../../src/testbed/world.js';

/**
 * The host tells each guest which portals it serves it, from its policy, and
 * the guest backend exports only their interfaces: a VM denied FileChooser
 * outright has no file chooser interface on its bus, and gets it back when
 * the row goes, without a restart.
 */
let world: World;

beforeAll(async () => {
  world = await World.start([{ name: 'work' }, { name: 'shop' }]);
});
afterAll(async () => {
  await world?.stop();
});

const guestInterfaces = (vm: string) => world.guestExports(vm);

/** Every portal with a host half, in PORTALS' order: what a VM is served with no rows. */
const ALL: string[] = PORTALS.filter((p) => 'host' in p && !!p.host).map((p) => p.name);
const allBut = (...names: string[]) => ALL.filter((n) => !names.includes(n));

const served = async (vm: string) => (JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { name: string; portals: string[] }[] }).vms.find((v) => v.name === vm)!.portals;

describe('the portals a VM is served', () => {
  it('are all that have a host half, by default, and the guest exports their interfaces', async () => {
    expect(ALL).toEqual(expect.arrayContaining(['FileChooser', 'Settings']));
    expect(await served('work')).toEqual(ALL);
    expect(await guestInterfaces('work')).toContain('org.freedesktop.impl.portal.FileChooser');
    expect(await guestInterfaces('work')).toContain('org.freedesktop.impl.portal.Settings');
  });

  it('lose one that a VM-wide deny row shuts, live on the guest bus, and only for that VM', async () => {
    await world.cli(['permissions', 'set', 'work', 'FileChooser', 'deny']);
    await expect.poll(() => served('work'), { timeout: 10_000 }).toEqual(allBut('FileChooser'));
    await expect.poll(() => guestInterfaces('work'), { timeout: 10_000 }).not.toContain('org.freedesktop.impl.portal.FileChooser');
    expect(await guestInterfaces('shop')).toContain('org.freedesktop.impl.portal.FileChooser');
    for (const p of allBut('FileChooser')) await world.cli(['permissions', 'set', 'work', p, 'deny']);
    await expect.poll(() => served('work'), { timeout: 10_000 }).toEqual([]);
    expect((await world.cli(['vms'])).stdout).toMatch(/^work\s.*\snone$/m);
  });

  it('keep one denied only for some arguments', async () => {
    await world.cli(['permissions', 'reset', 'work']);
    await world.cli(['permissions', 'set', 'work', 'FileChooser', 'deny', 'save']);
    await expect.poll(() => served('work'), { timeout: 10_000 }).toEqual(ALL);
    await expect.poll(() => guestInterfaces('work'), { timeout: 10_000 }).toContain('org.freedesktop.impl.portal.FileChooser');
    world.dialog.behave(() => ({ response: 1 }));
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(1);
  });
});
