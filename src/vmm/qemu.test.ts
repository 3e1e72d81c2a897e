import { describe, expect, it } from 'vitest';
import { QemuAdapter } from './qemu.js';
import type { QmpClient, QmpEvent } from './qmp.js';
import { QmpError } from './qmp.js';
import type { VmmEvent } from './adapter.js';

/**
 * The QEMU adapter's NICs against a fake QMP that keeps a small QOM tree of
 * root ports and devices: what goes over the wire for netdev_add,
 * device_add, device_del and netdev_del, in which order, and what listNet
 * makes of the tree.
 */
class FakeQmp {
  calls: [string, Record<string, unknown> | undefined][] = [];
  private listeners = new Set<(e: QmpEvent) => void>();
  /** Root port id → the device id in it. */
  ports = new Map<string, string | undefined>([['rp1', undefined], ['rp2', undefined]]);
  devices = new Map<string, { driver: string; port: string; netdev?: string }>();
  netdevs = new Set<string>();
  /** device_del completes (DEVICE_DELETED) unless the guest is "stuck". */
  guestReleases = true;

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
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
        return [];
      }
      case 'qom-get': {
        const dev = this.devices.get((a.path as string).split('/').at(-1)!);
        if (a.property === 'parent_bus') return `/machine/peripheral/${dev!.port}/${dev!.port}`;
        if (a.property === 'netdev') return dev!.netdev;
        return '';
      }
      case 'netdev_add':
        this.netdevs.add(a.id as string);
        return {};
      case 'netdev_del':
        if (!this.netdevs.delete(a.id as string)) throw new QmpError('execute', 'qemu-error', 'x', { command, errorClass: 'GenericError', errorDesc: `Device '${a.id}' not found` });
        return {};
      case 'device_add': {
        if (a.driver === 'virtio-net-pci' && !this.netdevs.has(a.netdev as string)) throw new QmpError('execute', 'qemu-error', 'x', { command, errorClass: 'GenericError', errorDesc: 'no netdev' });
        this.devices.set(a.id as string, { driver: a.driver as string, port: a.bus as string, netdev: a.netdev as string });
        this.ports.set(a.bus as string, a.id as string);
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
    this.ports.set(d.port, undefined);
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
