import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QEMU_GUEST_MOUNT, World } from '../helpers/world.js';
import { bootPortalVm, type PortalVm } from './helpers/portal-vm.js';

/**
 * The FileChooser chain where users run it: apps in real QEMU guests (TCG),
 * the stock xdg-desktop-portal in each guest, our backend over virtio-serial,
 * the host daemon hot-plugging each VM's share over QMP.
 */
let world: World;
let work: PortalVm;
let shop: PortalVm;
let files: string;

beforeAll(async () => {
  world = await World.start([{ name: 'work', label: 'Work', qemu: true }, { name: 'shop', label: 'Shopping', qemu: true }]);
  files = path.join(world.root, 'alice');
  mkdirSync(files);
  [work, shop] = await Promise.all([bootPortalVm(world, 'work'), bootPortalVm(world, 'shop')]);
});
afterAll(async () => {
  await Promise.allSettled([work?.shutdown(), shop?.shutdown()]);
  await world?.stop();
});

function hostFile(name: string, content: string): string {
  const p = path.join(files, name);
  writeFileSync(p, content);
  return p;
}

describe('FileChooser in a QEMU guest', () => {
  it('OpenFile: the guest app reads the chosen host bytes through the hot-plugged share', async () => {
    const chosen = hostFile('q3.txt', 'Q3 numbers from the host');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${chosen}`] }));
    const r = await work.app(['open', 'Open Report']);
    expect(r.response).toBe(0);
    expect(r.files).toEqual([{ path: expect.stringMatching(new RegExp(`^${QEMU_GUEST_MOUNT}/\\w+/q3\\.txt$`)), content: 'Q3 numbers from the host' }]);
    expect(world.dialog.calls.at(-1)!.title).toBe('Work: Open Report');
    expect(await work.sh(`grep ' ${QEMU_GUEST_MOUNT} ' /proc/mounts`)).toMatch(/^xdp-vm-doc \/run\/xdp-vm\/doc virtiofs /);
  });
});
