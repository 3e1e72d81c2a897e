import { describe, expect, it } from 'vitest';
import { QemuAdapter } from './qemu.js';
import type { QmpClient, QmpEvent } from './qmp.js';
import { QmpError } from './qmp.js';
import type { VmmEvent } from './adapter.js';

/**
 * The QEMU adapter's NICs and USB devices against a fake QMP that keeps a
 * small QOM tree of root ports, devices and USB buses: what goes over the
 * wire for netdev_add, add-fd, device_add, device_del and netdev_del, in
 * which order, and what listNet and listUsb make of the tree. The fake
 * answers as QEMU 7.2 does (its error texts were read off the real one).
 */
class FakeQmp {
  calls: [string, Record<string, unknown> | undefined][] = [];
  private listeners = new Set<(e: QmpEvent) => void>();
  /** Root port id → the device id in it. */
  ports = new Map<string, string | undefined>([['rp1', undefined], ['rp2', undefined]]);
  /** `port` is a root port or a USB bus (`<controller id>.0`). */
  devices = new Map<string, { driver: string; port: string; netdev?: string }>();
  netdevs = new Set<string>();
  /** device_del completes (DEVICE_DELETED) unless the guest is "stuck". */
  guestReleases = true;
  /** What qom-list-types answers, by the type asked about. */
  types: Record<string, string[]> = { 'usb-host': ['usb-host'], 'pci-xhci': ['nec-usb-xhci', 'qemu-xhci'] };
  /** Host USB devices QEMU can open, as `bus:address`. */
  hostUsb = new Set<string>(['3:7']);
  /** fdset id → the descriptors sent with add-fd; deleted by remove-fd. */
  fdsets = new Map<number, number[]>();
  private nextFdset = 0;

  async execute(command: string, args?: Record<string, unknown>, opts: { fds?: number[] } = {}): Promise<unknown> {
    this.calls.push([command, args]);
    const a = args ?? {};
    switch (command) {
      case 'qom-list': {
        const p = a.path as string;
        if (p === '/machine/peripheral') {
          return [...[...this.ports.keys()].map((name) => ({ name, type: 'child<pcie-root-port>' })), ...[...this.devices].map(([name, d]) => ({ name, type: `child<${d.driver}>` }))];
        }
        if (p === '/machine/peripheral-anon') throw new QmpError('execute', 'qemu-error', 'x', { command, errorClass: 'DeviceNotFound', errorDesc: 'not found' });
        const port = /^\/machine\/peripheral\/(rp\d)$/.exec(p)?.[1];
        if (port) return [{ name: port, type: 'child<PCIE>' }];
        const bus = /^\/machine\/peripheral\/(rp\d)\/rp\d$/.exec(p)?.[1];
        if (bus) return this.ports.get(bus) ? [{ name: 'child[0]', type: 'link<virtio-net-pci>' }] : [];
        const controller = /^\/machine\/peripheral\/([^/]+)$/.exec(p)?.[1];
        if (controller && this.devices.get(controller)?.driver.endsWith('-xhci')) return [{ name: 'xhci-core', type: 'child<base-xhci>' }, { name: `${controller}.0`, type: 'child<usb-bus>' }];
        return [];
      }
      case 'qom-get': {
        const dev = this.devices.get((a.path as string).split('/').at(-1)!);
        if (a.property === 'parent_bus') return this.ports.has(dev!.port) ? `/machine/peripheral/${dev!.port}/${dev!.port}` : `/machine/peripheral/${dev!.port.replace(/\.0$/, '')}/${dev!.port}`;
        if (a.property === 'netdev') return dev!.netdev;
        return '';
      }
      case 'qom-list-types':
        return (this.types[a.implements as string] ?? []).map((name) => ({ name, parent: a.implements }));
      case 'add-fd': {
        const id = this.nextFdset++;
        this.fdsets.set(id, opts.fds ?? []);
        return { 'fdset-id': id, fd: 40 + id };
      }
      case 'remove-fd':
        this.fdsets.delete(a['fdset-id'] as number);
        return {};
      case 'netdev_add':
        this.netdevs.add(a.id as string);
        return {};
      case 'netdev_del':
        if (!this.netdevs.delete(a.id as string)) throw new QmpError('execute', 'qemu-error', 'x', { command, errorClass: 'GenericError', errorDesc: `Device '${a.id}' not found` });
        return {};
      case 'device_add': {
        const fail = (desc: string) => new QmpError('execute', 'qemu-error', 'x', { command, errorClass: 'GenericError', errorDesc: desc });
        if (a.driver === 'virtio-net-pci' && !this.netdevs.has(a.netdev as string)) throw fail('no netdev');
        if (this.devices.has(a.id as string)) throw fail(`Duplicate device ID '${a.id}'`);
        if (a.driver === 'usb-host') {
          if (!this.devices.has((a.bus as string).replace(/\.0$/, ''))) throw fail(`Bus '${a.bus}' not found`);
          const fdset = /^\/dev\/fdset\/(\d+)$/.exec((a.hostdevice as string | undefined) ?? '')?.[1];
          if (fdset !== undefined && !this.fdsets.has(Number(fdset))) throw fail(`failed to open ${a.hostdevice}: No such file or directory`);
          if (fdset === undefined && !this.hostUsb.has(`${a.hostbus}:${a.hostaddr}`)) throw fail(`failed to find host usb device ${a.hostbus}:${a.hostaddr}`);
        }
        this.devices.set(a.id as string, { driver: a.driver as string, port: a.bus as string, netdev: a.netdev as string });
        if (this.ports.has(a.bus as string)) this.ports.set(a.bus as string, a.id as string);
        return {};
      }
      case 'device_del': {
        const id = a.id as string;
        if (!this.devices.has(id)) throw new QmpError('execute', 'qemu-error', 'x', { command, errorClass: 'DeviceNotFound', errorDesc: `Device '${id}' not found` });
        if (this.guestReleases) setImmediate(() => this.remove(id));
        return {};
      }
    }
    throw new Error(`unexpected ${command}`);
  }

  /** The device goes, as when the guest releases it (or ejects it by itself). */
  remove(id: string): void {
    const d = this.devices.get(id)!;
    this.devices.delete(id);
    if (this.ports.has(d.port)) this.ports.set(d.port, undefined);
    this.emit({ event: 'DEVICE_DELETED', data: { device: id, path: `/machine/peripheral/${id}` }, timestamp: { seconds: 0, microseconds: 0 } });
  }

  emit(e: QmpEvent): void {
    for (const l of [...this.listeners]) l(e);
  }

  onEvent(l: (e: QmpEvent) => void) {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  onDisconnect() {
    return () => undefined;
  }

  waitForEvent(predicate: (e: QmpEvent) => boolean, opts: { timeoutMs?: number } = {}): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => (off(), reject(new QmpError('execute', 'timeout', 'no event'))), opts.timeoutMs ?? 1000);
      const off = this.onEvent((e) => {
        if (!predicate(e)) return;
        clearTimeout(timer);
        off();
        resolve(e);
      });
    });
  }

  writes(): [string, Record<string, unknown> | undefined][] {
    return this.calls.filter(([c]) => !c.startsWith('qom-'));
  }
}

const socketPath = '/run/user/1000/xdp-vm/work-net-web.sock';
const spec = { id: 'web', backend: { type: 'stream' as const, socketPath }, mac: '02:5a:11:22:33:44' };

function adapter() {
  const qmp = new FakeQmp();
  const vmm = new QemuAdapter(qmp as unknown as QmpClient, { name: 'work' });
  const events: VmmEvent[] = [];
  vmm.events.subscribe((e) => events.push(e));
  return { qmp, vmm, events };
}

describe('QEMU NICs', () => {
  it('attach: a stream netdev to the socket, then virtio-net-pci with the MAC on the first free root port', async () => {
    const { qmp, vmm } = adapter();
    qmp.ports.set('rp1', 'xdpvm-fs-doc');
    const h = await vmm.net.attachNet(spec);
    expect(h).toEqual({ kind: 'net', id: 'web', deviceId: 'xdpvm-net-web', location: 'rp2' });
    expect(qmp.writes()).toEqual([
      ['netdev_add', { type: 'stream', id: 'xdpvm-nd-web', server: false, addr: { type: 'unix', path: socketPath } }],
      ['device_add', { driver: 'virtio-net-pci', id: 'xdpvm-net-web', netdev: 'xdpvm-nd-web', bus: 'rp2', mac: '02:5a:11:22:33:44' }],
    ]);
  });

  it('lists the NICs by our naming, with their root port, so a new daemon adopts them', async () => {
    const { qmp, vmm } = adapter();
    await vmm.net.attachNet(spec);
    qmp.devices.set('boot-nic', { driver: 'virtio-net-pci', port: 'rp2' });
    qmp.devices.set('xdpvm-fs-doc', { driver: 'vhost-user-fs-pci', port: 'rp2' });
    expect(await vmm.net.listNet()).toEqual([
      { kind: 'net', id: undefined, deviceId: 'boot-nic', location: 'rp2' },
      { kind: 'net', id: 'web', deviceId: 'xdpvm-net-web', location: 'rp1' },
    ]);
    // Another adapter (a restarted daemon) can detach what this one attached.
    await vmm.close();
    const again = new QemuAdapter(qmp as unknown as QmpClient, { name: 'work' });
    qmp.calls = [];
    await again.net.detachNet('web');
    expect(qmp.writes()).toEqual([['device_del', { id: 'xdpvm-net-web' }], ['netdev_del', { id: 'xdpvm-nd-web' }]]);
  });

  it('detach: device_del, DEVICE_DELETED, only then netdev_del, and one expected event', async () => {
    const { qmp, vmm, events } = adapter();
    await vmm.net.attachNet(spec);
    qmp.calls = [];
    await vmm.net.detachNet('web');
    expect(qmp.writes()).toEqual([['device_del', { id: 'xdpvm-net-web' }], ['netdev_del', { id: 'xdpvm-nd-web' }]]);
    expect(qmp.netdevs.size).toBe(0);
    expect(events).toEqual([{ type: 'device-detached', kind: 'net', id: 'web', deviceId: 'xdpvm-net-web', expected: true }]);
    await expect(vmm.net.detachNet('web')).rejects.toThrow(/NIC web is not attached/);
  });

  it('a guest that never releases the NIC: the detach fails in words, and the netdev stays for a retry', async () => {
    const { qmp, vmm } = adapter();
    await vmm.net.attachNet(spec);
    qmp.guestReleases = false;
    await expect(vmm.net.detachNet('web', { timeoutMs: 50 })).rejects.toThrow(/did not report xdpvm-net-web deleted within 50 ms/);
    expect(qmp.netdevs.has('xdpvm-nd-web')).toBe(true);
  });

  it('a NIC the VM loses by itself is an unexpected event, and its netdev is freed', async () => {
    const { qmp, vmm, events } = adapter();
    await vmm.net.attachNet(spec);
    qmp.remove('xdpvm-net-web');
    await new Promise((r) => setImmediate(r));
    expect(events).toEqual([{ type: 'device-detached', kind: 'net', id: 'web', deviceId: 'xdpvm-net-web', expected: false }]);
    expect(qmp.netdevs.size).toBe(0);
  });

  it('refuses before sending anything: a multicast or malformed MAC, a bad id, a tap without its descriptor, no free port, a NIC already in', async () => {
    const { qmp, vmm } = adapter();
    await expect(vmm.net.attachNet({ ...spec, mac: '03:00:00:00:00:01' })).rejects.toThrow(/unicast/);
    await expect(vmm.net.attachNet({ ...spec, mac: '02-00-00-00-00-01' })).rejects.toThrow(/unicast/);
    await expect(vmm.net.attachNet({ ...spec, id: '../x' })).rejects.toThrow(/must start with a letter/);
    await expect(vmm.net.attachNet({ id: 'lan', backend: { type: 'tap', tapName: 'xdpvm0' } })).rejects.toThrow(/needs the tap's descriptor from the privileged helper/);
    expect(qmp.writes()).toEqual([]);
    await vmm.net.attachNet(spec);
    await expect(vmm.net.attachNet(spec)).rejects.toThrow(/already in the VM/);
    await vmm.net.attachNet({ ...spec, id: 'dev' });
    await expect(vmm.net.attachNet({ ...spec, id: 'third' })).rejects.toThrow(/no free pcie-root-port/);
  });

  it('a device_add QEMU refuses takes its netdev back', async () => {
    const { qmp, vmm } = adapter();
    const real = qmp.execute.bind(qmp);
    qmp.execute = async (c, a) => {
      if (c === 'device_add') qmp.calls.push([c, a]);
      if (c === 'device_add') throw new QmpError('execute', 'qemu-error', 'x', { command: c, errorClass: 'GenericError', errorDesc: 'Bus rp1 is full' });
      return real(c, a);
    };
    await expect(vmm.net.attachNet(spec)).rejects.toThrow(/device_add on rp1 failed: Bus rp1 is full/);
    expect(qmp.writes().map(([c]) => c)).toEqual(['netdev_add', 'device_add', 'netdev_del']);
    expect(qmp.netdevs.size).toBe(0);
  });
});

const stick = { id: 'stick', vendorId: 0x46f4, productId: 0x0001, hostBus: 3, hostAddress: 7 };

describe('QEMU USB passthrough', () => {
  it('a VM without a controller: qemu-xhci hot-plugged once on a free root port, then usb-host by bus and address on its bus', async () => {
    const { qmp, vmm } = adapter();
    qmp.ports.set('rp1', 'xdpvm-fs-doc');
    expect(await vmm.usb!.attachUsb(stick)).toEqual({ kind: 'usb', id: 'stick', deviceId: 'xdpvm-usb-stick', location: 'xdpvm-xhci' });
    qmp.hostUsb.add('3:8');
    await vmm.usb!.attachUsb({ ...stick, id: 'other', hostAddress: 8 });
    expect(qmp.calls.filter(([c]) => c === 'qom-list-types' || !c.startsWith('qom-'))).toEqual([
      ['qom-list-types', { implements: 'usb-host', abstract: false }],
      ['qom-list-types', { implements: 'pci-xhci', abstract: false }],
      ['device_add', { driver: 'qemu-xhci', id: 'xdpvm-xhci', bus: 'rp2' }],
      ['device_add', { driver: 'usb-host', id: 'xdpvm-usb-stick', bus: 'xdpvm-xhci.0', hostbus: 3, hostaddr: 7 }],
      // What QEMU has is asked once; the controller is found, not plugged again.
      ['device_add', { driver: 'usb-host', id: 'xdpvm-usb-other', bus: 'xdpvm-xhci.0', hostbus: 3, hostaddr: 8 }],
    ]);
    expect(await vmm.usb!.listUsb()).toEqual([
      { kind: 'usb', id: 'other', deviceId: 'xdpvm-usb-other', location: 'xdpvm-xhci' },
      { kind: 'usb', id: 'stick', deviceId: 'xdpvm-usb-stick', location: 'xdpvm-xhci' },
    ]);
  });

  it('uses the xHCI controller the VM was started with, and lists the usb-host devices it came with', async () => {
    const { qmp, vmm } = adapter();
    qmp.devices.set('usb0', { driver: 'nec-usb-xhci', port: 'pcie.0' });
    qmp.devices.set('boot-dongle', { driver: 'usb-host', port: 'usb0.0' });
    qmp.devices.set('kbd', { driver: 'usb-kbd', port: 'usb0.0' });
    await vmm.usb!.attachUsb(stick);
    expect(qmp.writes().filter(([c]) => c === 'device_add')).toEqual([['device_add', { driver: 'usb-host', id: 'xdpvm-usb-stick', bus: 'usb0.0', hostbus: 3, hostaddr: 7 }]]);
    expect(await vmm.usb!.listUsb()).toEqual([
      { kind: 'usb', id: undefined, deviceId: 'boot-dongle', location: 'usb0' },
      { kind: 'usb', id: 'stick', deviceId: 'xdpvm-usb-stick', location: 'usb0' },
    ]);
  });

  it("the helper's descriptor: add-fd with it, usb-host on /dev/fdset/N, and the fdset removed once usb-host holds its own copy", async () => {
    const { qmp, vmm } = adapter();
    qmp.hostUsb.clear();
    await vmm.usb!.attachUsb({ ...stick, fd: 23 });
    expect(qmp.writes()).toEqual([
      ['device_add', { driver: 'qemu-xhci', id: 'xdpvm-xhci', bus: 'rp1' }],
      ['add-fd', { opaque: 'xdpvm-usb-stick' }],
      ['device_add', { driver: 'usb-host', id: 'xdpvm-usb-stick', bus: 'xdpvm-xhci.0', hostbus: 3, hostaddr: 7, hostdevice: '/dev/fdset/0' }],
      ['remove-fd', { 'fdset-id': 0 }],
    ]);
    expect(qmp.fdsets.size).toBe(0);
    // The descriptor itself went with add-fd, as SCM_RIGHTS.
    const sent: number[][] = [];
    const real = qmp.execute.bind(qmp);
    qmp.execute = async (c, a, o = {}) => (c === 'add-fd' && sent.push(o.fds ?? []), real(c, a, o));
    await vmm.usb!.attachUsb({ ...stick, id: 'two', fd: 31 });
    expect(sent).toEqual([[31]]);
  });

  it('a device that is not there: an error naming it and what QEMU said, nothing attached, the fdset gone, the controller kept', async () => {
    const { qmp, vmm } = adapter();
    const absent = { ...stick, id: 'gone', hostBus: 1, hostAddress: 99 };
    const said = 'USB device gone: QEMU could not attach Bus 001 Device 099 (ID 46f4:0001) by its bus and address on xdpvm-xhci: failed to find host usb device 1:99. Nothing was attached; the xHCI controller stays for the next device';
    await expect(vmm.usb!.attachUsb(absent)).rejects.toThrow(said);
    expect(await vmm.usb!.listUsb()).toEqual([]);
    expect([...qmp.devices.keys()]).toEqual(['xdpvm-xhci']);
    // Again: the same words, and no second controller.
    await expect(vmm.usb!.attachUsb(absent)).rejects.toThrow(said);
    expect(qmp.writes().filter(([c, a]) => c === 'device_add' && a?.driver === 'qemu-xhci')).toHaveLength(1);
    // By descriptor, QEMU's open failing is said the same way, and its fdset is removed.
    const real = qmp.execute.bind(qmp);
    qmp.execute = async (c, a, o) => {
      if (c === 'device_add' && a?.driver === 'usb-host') qmp.calls.push([c, a]);
      if (c === 'device_add' && a?.driver === 'usb-host') throw new QmpError('execute', 'qemu-error', 'x', { command: c, errorClass: 'GenericError', errorDesc: `failed to open host usb device ${a.hostdevice}` });
      return real(c, a, o);
    };
    await expect(vmm.usb!.attachUsb({ ...absent, fd: 5 })).rejects.toThrow(/^USB device gone: QEMU could not attach Bus 001 Device 099 \(ID 46f4:0001\) through the helper's descriptor on xdpvm-xhci: failed to open host usb device \/dev\/fdset\/0\./);
    expect(qmp.fdsets.size).toBe(0);
    expect(qmp.calls.at(-1)).toEqual(['remove-fd', { 'fdset-id': 0 }]);
  });

  it('a QEMU without usb-host, or with no xHCI to hot-plug, is refused in words, asked once and before anything is plugged', async () => {
    const { qmp, vmm } = adapter();
    qmp.types['usb-host'] = [];
    await expect(vmm.usb!.attachUsb(stick)).rejects.toThrow('USB device stick: this QEMU has no usb-host device (it was built without libusb), so it cannot pass host USB devices through');
    await expect(vmm.usb!.attachUsb(stick)).rejects.toThrow(/no usb-host device/);
    expect(qmp.calls.filter(([c]) => c === 'qom-list-types')).toHaveLength(2);
    const other = adapter();
    other.qmp.types['pci-xhci'] = ['nec-usb-xhci'];
    await expect(other.vmm.usb!.attachUsb(stick)).rejects.toThrow("the VM has no xHCI controller and this QEMU has no qemu-xhci device to hot-plug (it has nec-usb-xhci); start the VM with '-device nec-usb-xhci'");
    expect(other.qmp.writes().filter(([c]) => c === 'device_add')).toEqual([]);
  });

  it('refuses before sending anything: a bad id, bus, address, ids or descriptor; no free root port for the controller; a device already in', async () => {
    const { qmp, vmm } = adapter();
    await expect(vmm.usb!.attachUsb({ ...stick, id: '../x' })).rejects.toThrow(/USB device id "..\/x" must start with a letter/);
    await expect(vmm.usb!.attachUsb({ ...stick, hostBus: 0 })).rejects.toThrow('USB device stick: bus 0 must be a bus number 1-255 (busnum in sysfs)');
    await expect(vmm.usb!.attachUsb({ ...stick, hostAddress: 128 })).rejects.toThrow('USB device stick: address 128 must be a device address 1-127 (devnum in sysfs)');
    await expect(vmm.usb!.attachUsb({ ...stick, hostAddress: 1.5 })).rejects.toThrow(/address 1.5 must be/);
    await expect(vmm.usb!.attachUsb({ ...stick, vendorId: 0x10000 })).rejects.toThrow(/must be 16-bit ids/);
    await expect(vmm.usb!.attachUsb({ ...stick, fd: -1 })).rejects.toThrow(/descriptor -1 must be/);
    expect(qmp.calls).toEqual([]);
    qmp.ports.set('rp1', 'a').set('rp2', 'b');
    await expect(vmm.usb!.attachUsb(stick)).rejects.toThrow("USB device stick: the VM has no xHCI controller and no free pcie-root-port to hot-plug one on; start it with '-device qemu-xhci' or one more '-device pcie-root-port,id=…'");
    qmp.ports.set('rp2', undefined);
    await vmm.usb!.attachUsb(stick);
    await expect(vmm.usb!.attachUsb(stick)).rejects.toThrow('USB device stick: device xdpvm-usb-stick is already in the VM; detach it first');
  });

  it('detach: device_del, then nothing until DEVICE_DELETED, then one expected event; an unknown id is said so', async () => {
    const { qmp, vmm, events } = adapter();
    await vmm.usb!.attachUsb(stick);
    qmp.calls = [];
    qmp.guestReleases = false;
    let settled = false;
    const detached = vmm.usb!.detachUsb('stick').finally(() => (settled = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(qmp.writes()).toEqual([['device_del', { id: 'xdpvm-usb-stick' }]]);
    expect([settled, events]).toEqual([false, []]);
    qmp.remove('xdpvm-usb-stick');
    await detached;
    expect(events).toEqual([{ type: 'device-detached', kind: 'usb', id: 'stick', deviceId: 'xdpvm-usb-stick', expected: true }]);
    await expect(vmm.usb!.detachUsb('stick')).rejects.toThrow('USB device stick is not attached to this VM');
    // No DEVICE_DELETED at all: the detach fails in words, and stays retryable.
    await vmm.usb!.attachUsb(stick);
    await expect(vmm.usb!.detachUsb('stick', { timeoutMs: 50 })).rejects.toThrow(/^USB device stick: QEMU did not report xdpvm-usb-stick deleted within 50 ms; QEMU removes a USB device without the guest/);
    qmp.guestReleases = true;
    await vmm.usb!.detachUsb('stick');
  });

  it('a restarted daemon detaches the usb-host an earlier one attached, by its name', async () => {
    const { qmp, vmm } = adapter();
    await vmm.usb!.attachUsb(stick);
    await vmm.close();
    const again = new QemuAdapter(qmp as unknown as QmpClient, { name: 'work' });
    await again.usb!.detachUsb('stick');
    expect(qmp.devices.has('xdpvm-usb-stick')).toBe(false);
  });

  it('a usb-host QEMU removes by itself (its controller went, or someone else device_del-ed it) is an unexpected detach', async () => {
    const { qmp, vmm, events } = adapter();
    await vmm.usb!.attachUsb(stick);
    qmp.remove('xdpvm-usb-stick');
    expect(events).toEqual([{ type: 'device-detached', kind: 'usb', id: 'stick', deviceId: 'xdpvm-usb-stick', expected: false }]);
    // Its controller going too is no event of ours: the next attach plugs a new one.
    qmp.remove('xdpvm-xhci');
    expect(events).toHaveLength(1);
    await vmm.usb!.attachUsb(stick);
    expect(qmp.writes().filter(([c, a]) => c === 'device_add' && a?.driver === 'qemu-xhci')).toHaveLength(2);
  });
});
