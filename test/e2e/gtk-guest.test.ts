import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { QEMU_GUEST_MOUNT, World } from '../../src/testbed/world.js';
import { bootPortalVm, type PortalVm } from '../../src/testbed/qemu/portal-vm.js';

/**
 * A real app in a real guest: GTK 3's Gtk.FileChooserNative in gjs, on an
 * Xvfb inside the VM, with GTK_USE_PORTAL=1 as install-guest sets it.
 */
let world: World;
let vm: PortalVm;

beforeAll(async () => {
  world = await World.start([{ name: 'work', label: 'Work', qemu: true }]);
  vm = await bootPortalVm(world, 'work', { memMiB: 768 });
});
afterAll(async () => {
  await vm?.shutdown().catch(() => vm.guest.cleanup());
  await world?.stop();
});

it('GTK\'s native file chooser in the guest opens a host file through the host dialog', async () => {
  const dir = path.join(world.root, 'alice');
  world.hostDir(dir);
  world.hostFile(path.join(dir, 'report.txt'), 'numbers for the GTK app');
  world.dialog.behave(() => ({ response: 0, uris: [`file://${dir}/report.txt`] }));
  const fixture = path.join(packageRoot(), 'test', 'fixtures', 'gtk3-file-chooser.js');
  const out = await vm.sh(
    [
      'Xvfb :7 -screen 0 800x600x24 -nolisten tcp > /run/xvfb.log 2>&1 &',
      'for i in $(seq 200); do [ -S /tmp/.X11-unix/X7 ] && break; sleep 0.1; done',
      `DISPLAY=:7 GTK_USE_PORTAL=1 NO_AT_BRIDGE=1 gjs ${fixture} open 2>/run/gjs.log`,
    ].join('\n'),
    240_000,
  );
  const result = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, string>;
  expect(result).toMatchObject({ response: 'accept', contents: 'numbers for the GTK app' });
  expect(result.path!.startsWith(`${QEMU_GUEST_MOUNT}/`)).toBe(true);
  expect(world.dialog.calls.at(-1)).toMatchObject({ title: 'Work: Open Report', options: { filters: [['Text files', [[0, '*.txt']]]] } });
}, 300_000);
