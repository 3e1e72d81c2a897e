import { closeSync, openSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import type { VmmEvent } from '../../src/vmm/adapter.js';
import { QemuAdapter } from '../../src/vmm/qemu.js';
import { usbHostArgs, xhciArgs } from '../../src/vmm/qemu-usb.js';
import { bootGuest, type Guest } from '../../src/testbed/qemu/vm.js';

/**
 * The QEMU adapter's USB passthrough against this machine's QEMU (7.2) and a
 * real TCG guest kernel. This machine has no USB devices, so nothing real is
 * passed through; what is proven is all the rest: the properties we send are
 * QEMU's own, a guest started with no USB controller gets our hot-plugged
 * xHCI (its kernel binds xhci_hcd and makes its root hubs), a device that is
 * not there is refused with our words and QEMU's, once per attempt and with
 * no second controller, the descriptor route reaches QEMU's open (an
 * O_RDWR descriptor is dup'ed and handed to libusb, an O_RDONLY one is
 * refused), and a detach waits for QEMU's own DEVICE_DELETED.
 */
const SLOW = 110_000;
const ABSENT = { id: 'absent', vendorId: 0x1234, productId: 0x5678, hostBus: 1, hostAddress: 99 };
let guest: Guest;
let adapter: QemuAdapter;
const events: VmmEvent[] = [];

/** The properties `qemu-system-x86_64 -device DRIVER,help` lists. */
async function qemuProperties(driver: string): Promise<Set<string>> {
  const { stdout } = await runProgram(requireProgram('qemu-system-x86_64'), ['-device', `${driver},help`]);
  return new Set([...stdout.matchAll(/^\s+([\w.-]+)=</gm)].map((m) => m[1]!));
}

/** Arguments device_add takes for every device (qdev's own), which `help` does not list. */
const QDEV_OWN = new Set(['driver', 'id', 'bus']);

/** The guest's PCI classes and USB root hubs, as its kernel shows them in sysfs. */
async function guestUsb(): Promise<{ xhciPci: number; rootHubs: string[] }> {
  const out = await guest.agent.check(
    'grep -l "^0x0c0330$" /sys/bus/pci/devices/*/class 2>/dev/null | wc -l; ' +
      'for h in /sys/bus/usb/devices/usb*; do [ -e "$h" ] && echo "${h##*/} $(cat $h/product)"; done; true',
  );
  const [count, ...hubs] = out.trim().split('\n');
  return { xhciPci: Number(count), rootHubs: hubs.filter(Boolean) };
}

/** Our devices of one driver in /machine/peripheral. */
async function peripherals(type: string): Promise<string[]> {
  const list = (await guest.qmp.execute('qom-list', { path: '/machine/peripheral' })) as { name: string; type: string }[];
  return list.filter((c) => c.type === `child<${type}>`).map((c) => c.name);
}

beforeAll(async () => {
  // No USB controller at all, two free root ports; the initramfs's busybox is all the guest needs.
  guest = await bootGuest({ name: 'usb-qemu', rootPorts: 2, modules: ['core', 'usb'], hostRoot: false });
  adapter = new QemuAdapter(guest.qmp, { name: guest.name });
  adapter.events.subscribe((e) => events.push(e));
}, SLOW);
afterAll(async () => {
  await adapter?.close();
  await guest?.cleanup();
});

describe('USB passthrough through the QEMU adapter', () => {
  it("sends only properties QEMU's usb-host and qemu-xhci list", async () => {
    const [host, xhci] = await Promise.all([qemuProperties('usb-host'), qemuProperties('qemu-xhci')]);
    expect(host).toContain('hostdevice');
    const sent = (args: Record<string, unknown>) => Object.keys(args).filter((k) => !QDEV_OWN.has(k));
    for (const args of [usbHostArgs(ABSENT, 'b.0'), usbHostArgs({ ...ABSENT, fd: 3 }, 'b.0', 0)]) {
      expect(sent(args).filter((k) => !host.has(k))).toEqual([]);
    }
    expect(sent(xhciArgs('rp1')).filter((k) => !xhci.has(k))).toEqual([]);
  });

  it('hot-plugs an xHCI the guest kernel takes, refuses a device that is not there in words, and stays usable', async () => {
    expect(await guestUsb()).toEqual({ xhciPci: 0, rootHubs: [] });
    const said = 'USB device absent: QEMU could not attach Bus 001 Device 099 (ID 1234:5678) by its bus and address on xdpvm-xhci: failed to find host usb device 1:99. Nothing was attached; the xHCI controller stays for the next device';
    const t0 = Date.now();
    await expect(adapter.attachUsb(ABSENT)).rejects.toThrow(said);
    console.info(`[timing] attachUsb with controller hot-plug, refused: ${Date.now() - t0} ms`);
    expect(await peripherals('qemu-xhci')).toEqual(['xdpvm-xhci']);
    expect(await peripherals('usb-host')).toEqual([]);
    // The guest's kernel finds the controller on the root port and binds xhci_hcd: a USB 2 and a USB 3 root hub.
    await expect.poll(guestUsb, { timeout: 30_000, interval: 200 }).toEqual({ xhciPci: 1, rootHubs: ['usb1 xHCI Host Controller', 'usb2 xHCI Host Controller'] });
    expect(await adapter.listUsb()).toEqual([]);
    // Again: the same words, the same controller, and the other root port still free.
    await expect(adapter.attachUsb(ABSENT)).rejects.toThrow(said);
    expect(await peripherals('qemu-xhci')).toEqual(['xdpvm-xhci']);
    expect(await adapter.freeRootPorts()).toEqual(['rp2']);
    expect(events).toEqual([]);
  }, SLOW);

  it("takes the helper's descriptor through an fdset that QEMU's open dups (O_RDWR only), and removes the fdset", async () => {
    // /dev/null is no usbfs node: QEMU's open of /dev/fdset/N succeeds and libusb then refuses it.
    const rw = openSync('/dev/null', 'r+');
    const ro = openSync('/dev/null', 'r');
    try {
      await expect(adapter.attachUsb({ ...ABSENT, id: 'byfd', fd: rw })).rejects.toThrow(
        /^USB device byfd: QEMU could not attach Bus 001 Device 099 \(ID 1234:5678\) through the helper's descriptor on xdpvm-xhci: failed to open host usb device \/dev\/fdset\/\d+\./,
      );
      await expect(adapter.attachUsb({ ...ABSENT, id: 'byfd', fd: ro })).rejects.toThrow(/: failed to open \/dev\/fdset\/\d+: Permission denied\./);
    } finally {
      closeSync(rw);
      closeSync(ro);
    }
    // Our copies are gone from every fdset (QEMU lists a set as long as a dup of it lives).
    const fdsets = (await guest.qmp.execute('query-fdsets')) as { fds: { opaque?: string }[] }[];
    expect(fdsets.flatMap((s) => s.fds).filter((f) => f.opaque?.startsWith('xdpvm-'))).toEqual([]);
    expect(await peripherals('usb-host')).toEqual([]);
  }, SLOW);

  it("lists a usb-host named as ours and detaches it on QEMU's DEVICE_DELETED", async () => {
    // With vendorid and productid QEMU waits for the device instead of opening it, so it can be added here.
    await guest.qmp.execute('device_add', { driver: 'usb-host', id: 'xdpvm-usb-parked', bus: 'xdpvm-xhci.0', vendorid: 0x1234, productid: 0x5678 });
    expect(await adapter.listUsb()).toEqual([{ kind: 'usb', id: 'parked', deviceId: 'xdpvm-usb-parked', location: 'xdpvm-xhci' }]);
    await adapter.detachUsb('parked');
    expect(await adapter.listUsb()).toEqual([]);
    expect(events).toEqual([{ type: 'device-detached', kind: 'usb', id: 'parked', deviceId: 'xdpvm-usb-parked', expected: true }]);
    await expect(adapter.detachUsb('parked')).rejects.toThrow('USB device parked is not attached to this VM');
  }, SLOW);

  it('a controller that goes takes its usb-host with it, with its own DEVICE_DELETED, and the next attach plugs a new one', async () => {
    await guest.qmp.execute('device_add', { driver: 'usb-host', id: 'xdpvm-usb-orphan', bus: 'xdpvm-xhci.0', vendorid: 0x1234, productid: 0x5678 });
    const orphan = guest.qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data.device === 'xdpvm-usb-orphan', { timeoutMs: 15_000 });
    // As when the guest ejects it: ACPI unplug, which the guest's kernel completes.
    await guest.qmp.execute('device_del', { id: 'xdpvm-xhci' });
    await orphan;
    // QEMU 7.2 reports the usb-host children but not the controller itself (no DEVICE_DELETED for it here); QOM is the truth.
    await expect.poll(() => peripherals('qemu-xhci'), { timeout: 15_000, interval: 100 }).toEqual([]);
    await expect.poll(guestUsb, { timeout: 30_000, interval: 200 }).toEqual({ xhciPci: 0, rootHubs: [] });
    await expect(adapter.attachUsb(ABSENT)).rejects.toThrow(/^USB device absent: QEMU could not attach Bus 001 Device 099 .* on xdpvm-xhci: failed to find host usb device 1:99\./);
    expect(await peripherals('qemu-xhci')).toEqual(['xdpvm-xhci']);
    await expect.poll(guestUsb, { timeout: 30_000, interval: 200 }).toMatchObject({ xhciPci: 1 });
  }, SLOW);
});
