import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus } from '../../src/dbus/bus.js';
import { runProgram } from '../../src/exec.js';
import { cliEntry } from '../../src/paths.js';
import { World } from '../../src/testbed/world.js';

/**
 * The Usb portal's wiring, through real buses: the guest backend exports
 * io.github.xdp_vm.Usb1 because the host serves this VM Usb, `xdp-vm usb`
 * in the guest reaches the host daemon through it, and `xdp-vm usb` on the
 * host reaches the daemon's Host1. This machine has no USB bus at all
 * (/sys/bus/usb is absent), so what is asserted is what a user sees on such
 * a host; the devices themselves, the consent and the attaching are the
 * unit tests' (portals/usb/host-usb.test.ts) and the end-to-end tier's.
 */
let world: World;

beforeAll(async () => {
  world = await World.start([{ name: 'work', label: 'Work' }]);
});
afterAll(async () => {
  await world?.stop();
});

/** `xdp-vm` as an app in the VM runs it: on the guest's session bus. */
const inGuest = (args: string[]) => runProgram(process.execPath, [cliEntry(), ...args], { env: { ...world.guest('work').bus.env }, timeoutMs: 20_000 });
async function usbObject(): Promise<string> {
  const bus = await Bus.connect(world.guest('work').bus.address);
  try {
    const [xml] = await bus.call({ destination: 'org.freedesktop.impl.portal.desktop.vm', path: '/io/github/xdp_vm/Usb', interface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect', timeoutMs: 20_000 });
    return xml as string;
  } finally {
    bus.close();
  }
}
const failure = (p: Promise<unknown>) => p.then(() => '', (e: Error) => e.message);

describe('Usb through the buses', () => {
  it('the guest exports Usb1, and its CLI asks the host, which has nothing to offer here', async () => {
    await expect.poll(usbObject, { timeout: 20_000 }).toContain('<interface name="io.github.xdp_vm.Usb1">');
    expect((await inGuest(['usb', 'list'])).stdout.trim()).toBe('The host offers this VM no USB devices now.');
    expect(JSON.parse((await inGuest(['usb', 'list', '--json'])).stdout)).toEqual([]);
    expect(await failure(inGuest(['usb', 'attach', '1050:0407']))).toMatch(/the host offers this VM no USB device "1050:0407"; xdp-vm usb list shows what it offers/);
    // A usage error (status 2): in a VM, attach takes the device alone.
    expect(await failure(inGuest(['usb', 'attach', 'work', 'b1d5']))).toMatch(/exited with status 2/);
  });

  it('the host CLI lists, and names what it cannot find', async () => {
    expect((await world.cli(['usb', 'list'])).stdout.trim()).toBe('This host has no USB devices now.');
    expect(await failure(world.cli(['usb', 'attach', 'work', 'b1d5']))).toMatch(/no USB device "b1d5" on this host; xdp-vm usb list shows them \(none now\)/);
    expect(await failure(world.cli(['usb', 'detach', '1-2']))).toMatch(/no USB device "1-2" on this host/);
    expect(await failure(world.cli(['usb', 'attach', 'nosuchvm', 'b1d5']))).toMatch(/no USB device "b1d5"|no VM named "nosuchvm"/);
  });
});
