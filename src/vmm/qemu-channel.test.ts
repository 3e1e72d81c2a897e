import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { closeChannel, connectChannel, listChannels, openChannel, type ChannelQmp } from './qemu-channel.js';
import { QmpError, type QmpEvent } from './qmp.js';

/**
 * Byte channels against a fake QMP that keeps a small machine: root ports,
 * virtio-serial controllers (named or anonymous) with their buses and port
 * limits, virtserialports, and socket chardevs that really listen, so the
 * host end that openChannel returns is a real connection. The fake refuses
 * what QEMU 7.2 refuses, in its words (measured: a busy chardev, a port name
 * taken, a full bus, an unknown bus).
 */
const PERIPHERAL = '/machine/peripheral';

interface Controller {
  bus: string;
  anon: boolean;
  /** Port numbers, port 0 kept for a console as QEMU does. */
  maxPorts: number;
}

interface Chardev {
  path: string;
  server: net.Server;
  clients: Set<net.Socket>;
}

function qemuError(command: string, errorClass: string, errorDesc: string): QmpError {
  return new QmpError('execute', 'qemu-error', `${errorClass}: ${errorDesc}`, { command, errorClass, errorDesc });
}

class FakeQmp implements ChannelQmp {
  calls: [string, Record<string, unknown> | undefined][] = [];
  rootPorts = new Map<string, string | undefined>([['rp1', undefined], ['rp2', undefined]]);
  controllers = new Map<string, Controller>([['vser0', { bus: 'vser0.0', anon: false, maxPorts: 31 }]]);
  ports = new Map<string, { bus: string; chardev: string; name: string }>();
  chardevs = new Map<string, Chardev>();
  /** QEMU's end of each channel: what the guest side would see. */
  guestEnds = new Map<string, net.Socket>();
  deviceDelEmits = true;
  private listeners = new Set<(e: QmpEvent) => void>();

  // The fake answers what the module asks; its callers cast results as the real client would after zod.
  execute = (async (command: string, args?: Record<string, unknown>): Promise<unknown> => {
    this.calls.push([command, args]);
    const a = args ?? {};
    switch (command) {
      case 'qom-list':
        return this.qomList(a.path as string, command);
      case 'qom-get': {
        const port = this.ports.get((a.path as string).split('/').at(-1)!);
        if (!port) throw qemuError(command, 'DeviceNotFound', 'no such device');
        if (a.property === 'parent_bus') return `${PERIPHERAL}/${port.bus.replace(/\.0$/, '')}/virtio-backend/${port.bus}`;
        return port[a.property as 'chardev' | 'name'];
      }
      case 'chardev-add':
        return this.chardevAdd(a);
      case 'chardev-remove': {
        const id = a.id as string;
        const c = this.chardevs.get(id);
        if (!c) throw qemuError(command, 'GenericError', `Chardev '${id}' not found`);
        if ([...this.ports.values()].some((p) => p.chardev === id)) throw qemuError(command, 'GenericError', `Chardev '${id}' is busy`);
        for (const s of c.clients) s.destroy();
        c.server.close();
        this.chardevs.delete(id);
        return {};
      }
      case 'query-chardev':
        return [...this.chardevs].map(([label, c]) => ({
          label,
          filename: `${c.clients.size ? '' : 'disconnected:'}unix:${c.path},server=on`,
          'frontend-open': false,
        }));
      case 'device_add':
        return this.deviceAdd(a);
      case 'device_del': {
        const id = a.id as string;
        if (!this.ports.has(id)) throw qemuError(command, 'DeviceNotFound', `Device '${id}' not found`);
        if (this.deviceDelEmits) setImmediate(() => this.removePort(id));
        return {};
      }
    }
    throw new Error(`unexpected ${command}`);
  }) as ChannelQmp['execute'];

  private qomList(p: string, command: string): { name: string; type: string }[] {
    const named = [...this.controllers].filter(([, c]) => !c.anon);
    const anon = [...this.controllers].filter(([, c]) => c.anon);
    if (p === PERIPHERAL) {
      return [
        ...[...this.rootPorts.keys()].map((name) => ({ name, type: 'child<pcie-root-port>' })),
        ...named.map(([name]) => ({ name, type: 'child<virtio-serial-pci>' })),
        ...[...this.ports.keys()].map((name) => ({ name, type: 'child<virtserialport>' })),
      ];
    }
    if (p === '/machine/peripheral-anon') {
      if (!anon.length) throw qemuError(command, 'DeviceNotFound', 'not found');
      return anon.map(([name]) => ({ name, type: 'child<virtio-serial-pci>' }));
    }
    const port = /^\/machine\/peripheral\/(rp\d)(\/rp\d)?$/.exec(p);
    if (port) {
      if (!port[2]) return [{ name: port[1]!, type: 'child<PCIE>' }];
      return this.rootPorts.get(port[1]!) ? [{ name: 'child[0]', type: 'link<virtio-serial-pci>' }] : [];
    }
    const ctl = /^\/machine\/peripheral(?:-anon)?\/([^/]+)(\/virtio-backend)?$/.exec(p);
    const c = ctl && this.controllers.get(ctl[1]!);
    if (c) return ctl[2] ? [{ name: 'max_ports', type: 'uint32' }, { name: c.bus, type: 'child<virtio-serial-bus>' }] : [{ name: 'virtio-backend', type: 'child<virtio-serial-device>' }];
    return [];
  }

  private async chardevAdd(a: Record<string, unknown>): Promise<unknown> {
    const id = a.id as string;
    if (this.chardevs.has(id)) throw qemuError('chardev-add', 'GenericError', `Chardev '${id}' already exists`);
    const backend = a.backend as { data: { addr: { data: { path: string } }; server: boolean; wait: boolean } };
    const file = backend.data.addr.data.path;
    const clients = new Set<net.Socket>();
    const server = net.createServer((s) => {
      clients.add(s);
      this.guestEnds.set(id, s);
      s.on('close', () => clients.delete(s));
      s.on('error', () => undefined);
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(file, resolve));
    this.chardevs.set(id, { path: file, server, clients });
    return {};
  }

  private deviceAdd(a: Record<string, unknown>): unknown {
    const id = a.id as string;
    if (a.driver === 'virtio-serial-pci') {
      const rp = a.bus as string;
      if (this.rootPorts.get(rp)) throw qemuError('device_add', 'GenericError', `Bus '${rp}' is full`);
      this.rootPorts.set(rp, id);
      this.controllers.set(id, { bus: `${id}.0`, anon: false, maxPorts: 31 });
      return {};
    }
    const bus = a.bus as string;
    const ctl = [...this.controllers.values()].find((c) => c.bus === bus);
    if (!ctl) throw qemuError('device_add', 'GenericError', `Bus '${bus}' not found`);
    const chardev = a.chardev as string;
    if ([...this.ports.values()].some((p) => p.chardev === chardev)) throw qemuError('device_add', 'GenericError', `Property 'virtserialport.chardev' can't take value '${chardev}': Device '${chardev}' is in use`);
    if ([...this.ports.values()].some((p) => p.name === a.name)) throw qemuError('device_add', 'GenericError', `virtio-serial-bus: A port already exists by name ${a.name as string}`);
    // As QEMU 7.2 at the default 31 ports (measured): its free-id search runs past max_ports.
    if ([...this.ports.values()].filter((p) => p.bus === bus).length >= ctl.maxPorts - 1) throw qemuError('device_add', 'GenericError', `virtio-serial-bus: Out-of-range port id specified, max. allowed: ${ctl.maxPorts - 1}`);
    this.ports.set(id, { bus, chardev, name: a.name as string });
    return {};
  }

  removePort(id: string): void {
    this.ports.delete(id);
    this.emit({ event: 'DEVICE_DELETED', data: { device: id, path: `${PERIPHERAL}/${id}` }, timestamp: { seconds: 0, microseconds: 0 } });
  }

  emit(e: QmpEvent): void {
    for (const l of [...this.listeners]) l(e);
  }

  waitForEvent = ((predicate: (e: QmpEvent) => boolean, opts: { timeoutMs?: number } = {}): Promise<QmpEvent> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => (this.listeners.delete(l), reject(new QmpError('execute', 'timeout', 'no matching event'))), opts.timeoutMs ?? 1000);
      const l = (e: QmpEvent) => {
        if (!predicate(e)) return;
        clearTimeout(timer);
        this.listeners.delete(l);
        resolve(e);
      };
      this.listeners.add(l);
    })) as ChannelQmp['waitForEvent'];

  /** What changed the machine, without the questions. */
  writes(): [string, Record<string, unknown> | undefined][] {
    return this.calls.filter(([c]) => !c.startsWith('qom-') && c !== 'query-chardev');
  }

  close(): void {
    for (const c of this.chardevs.values()) {
      for (const s of c.clients) s.destroy();
      c.server.close();
    }
  }
}

let dir: string;
let fakes: FakeQmp[] = [];
const sockets: net.Socket[] = [];

function setup(): FakeQmp {
  dir = mkdtempSync(path.join(tmpdir(), 'qemu-channel-'));
  const qmp = new FakeQmp();
  fakes.push(qmp);
  return qmp;
}

function spec(id = 'usbip-b1d5', name = 'io.github.xdp_vm.usbip.b1d5') {
  return { id, name, socketPath: path.join(dir, `${id}.sock`) };
}

async function open(qmp: FakeQmp, s = spec(), opts = {}) {
  const ch = await openChannel(qmp, s, opts);
  sockets.push(ch.socket);
  return ch;
}

afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const f of fakes) f.close();
  fakes = [];
  rmSync(dir, { recursive: true, force: true });
});

describe('openChannel', () => {
  it("listens with QEMU as the server (never waiting), puts the port on the VM's own bus, and hands back a connected host end", async () => {
    const qmp = setup();
    const s = spec();
    const ch = await open(qmp, s);
    expect(ch).toMatchObject({ id: s.id, name: s.name, deviceId: 'xdpvm-port-usbip-b1d5', chardevId: 'xdpvm-portc-usbip-b1d5', bus: 'vser0.0', controllerPort: undefined });
    expect(qmp.writes()).toEqual([
      ['chardev-add', { id: 'xdpvm-portc-usbip-b1d5', backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: s.socketPath } }, server: true, wait: false } } }],
      ['device_add', { driver: 'virtserialport', id: 'xdpvm-port-usbip-b1d5', chardev: 'xdpvm-portc-usbip-b1d5', name: s.name, bus: 'vser0.0' }],
    ]);
    // The host end is QEMU's chardev connection: bytes cross both ways.
    await expect.poll(() => qmp.guestEnds.has(ch.chardevId)).toBe(true);
    const guest = qmp.guestEnds.get(ch.chardevId)!;
    const toGuest = new Promise<string>((r) => guest.once('data', (d: Buffer) => r(d.toString())));
    ch.socket.write('urb');
    expect(await toGuest).toBe('urb');
    const toHost = new Promise<string>((r) => ch.socket.once('data', (d: Buffer) => r(d.toString())));
    guest.write('ret');
    expect(await toHost).toBe('ret');
  });

  it('hot-plugs one virtio-serial controller of ours on the first free root port when the VM has none, and reuses it', async () => {
    const qmp = setup();
    qmp.controllers.clear();
    qmp.rootPorts.set('rp1', 'xdpvm-fs-doc');
    const first = await open(qmp);
    expect(first).toMatchObject({ bus: 'xdpvm-vser.0', controllerPort: 'rp2' });
    expect(qmp.writes().map(([c, a]) => [c, a?.driver, a?.bus])).toEqual([
      ['chardev-add', undefined, undefined],
      ['device_add', 'virtio-serial-pci', 'rp2'],
      ['device_add', 'virtserialport', 'xdpvm-vser.0'],
    ]);
    qmp.calls = [];
    const second = await open(qmp, spec('usbip-c2', 'io.github.xdp_vm.usbip.c2'));
    expect(second).toMatchObject({ bus: 'xdpvm-vser.0', controllerPort: undefined });
    expect(qmp.writes().filter(([, a]) => a?.driver === 'virtio-serial-pci')).toEqual([]);
  });

  it('two opens at once into a VM without a controller hot-plug it once', async () => {
    const qmp = setup();
    qmp.controllers.clear();
    const [a, b] = await Promise.all([open(qmp, spec('a1', 'port.a1')), open(qmp, spec('b1', 'port.b1'))]);
    expect([a.bus, b.bus]).toEqual(['xdpvm-vser.0', 'xdpvm-vser.0']);
    expect(qmp.writes().filter(([, x]) => x?.driver === 'virtio-serial-pci')).toHaveLength(1);
  });

  it("uses an anonymous controller's bus, and moves on to the next bus when one is full", async () => {
    const qmp = setup();
    qmp.controllers.set('vser0', { bus: 'vser0.0', anon: false, maxPorts: 2 });
    qmp.controllers.set('device[0]', { bus: 'virtio-serial-bus.0', anon: true, maxPorts: 31 });
    qmp.ports.set('boot-port', { bus: 'vser0.0', chardev: 'c0', name: 'io.github.xdp_vm.portal' });
    const ch = await open(qmp);
    expect(ch.bus).toBe('virtio-serial-bus.0');
    expect(qmp.writes().filter(([c]) => c === 'device_add').map(([, a]) => a?.bus)).toEqual(['vser0.0', 'virtio-serial-bus.0']);
  });

  it('no bus with room and no free root port: says so, and takes the chardev back', async () => {
    const qmp = setup();
    qmp.controllers.clear();
    qmp.rootPorts = new Map([['rp1', 'xdpvm-net-web']]);
    await expect(open(qmp)).rejects.toThrow(
      "channel usbip-b1d5: the VM has no virtio-serial controller, and there is no free pcie-root-port to hot-plug one on; start the VM with '-device virtio-serial-pci' or one more '-device pcie-root-port,id=…'",
    );
    qmp.controllers.set('vser0', { bus: 'vser0.0', anon: false, maxPorts: 1 });
    await expect(open(qmp)).rejects.toThrow(/its virtio-serial bus \(vser0\.0\) has no free port, and there is no free pcie-root-port/);
    expect(qmp.chardevs.size).toBe(0);
    expect(qmp.writes().map(([c]) => c)).toEqual(['chardev-add', 'chardev-remove', 'chardev-add', 'device_add', 'chardev-remove']);
  });

  it("QEMU's refusal is quoted and undone: a port name already taken in the VM", async () => {
    const qmp = setup();
    qmp.ports.set('boot-port', { bus: 'vser0.0', chardev: 'c0', name: 'io.github.xdp_vm.usbip.b1d5' });
    await expect(open(qmp)).rejects.toThrow('channel usbip-b1d5: device_add virtserialport on vser0.0 failed: virtio-serial-bus: A port already exists by name io.github.xdp_vm.usbip.b1d5');
    expect(qmp.chardevs.size).toBe(0);
  });

  it('refuses before sending anything: names that are not one plain path component, unsafe ids, socket paths QEMU cannot bind', async () => {
    const qmp = setup();
    for (const name of ['bad/name', '..', '.hidden', '', 'sp ace', 'x'.repeat(128), 'ünï', 'a\nb']) {
      await expect(open(qmp, { ...spec(), name }), name).rejects.toThrow(/port name .* must be 1 to 127 letters, digits/);
    }
    await expect(open(qmp, { ...spec(), id: '../x' })).rejects.toThrow(/channel id "\.\.\/x" must start with a letter/);
    await expect(open(qmp, { ...spec(), socketPath: 'rel.sock' })).rejects.toThrow(/must be absolute/);
    await expect(open(qmp, { ...spec(), socketPath: `/${'s'.repeat(107)}` })).rejects.toThrow(/at most 107 bytes \(it is 108\)/);
    expect(qmp.calls).toEqual([]);
    await expect(open(qmp, { ...spec(), name: 'x'.repeat(127) })).resolves.toMatchObject({ bus: 'vser0.0' });
  });

  it('a channel already open is refused, not doubled', async () => {
    const qmp = setup();
    await open(qmp);
    await expect(open(qmp)).rejects.toThrow('channel usbip-b1d5: device xdpvm-port-usbip-b1d5 is already in the VM; close it first');
  });
});

describe('closeChannel', () => {
  it('device_del, the DEVICE_DELETED naming the port, then chardev-remove, which hangs up the host end; again is false', async () => {
    const qmp = setup();
    const ch = await open(qmp);
    const ended = new Promise<void>((r) => ch.socket.once('close', () => r()));
    qmp.calls = [];
    expect(await closeChannel(qmp, ch.id)).toBe(true);
    expect(qmp.writes()).toEqual([['device_del', { id: 'xdpvm-port-usbip-b1d5' }], ['chardev-remove', { id: 'xdpvm-portc-usbip-b1d5' }]]);
    await ended;
    expect(await closeChannel(qmp, ch.id)).toBe(false);
    expect(await listChannels(qmp)).toEqual([]);
    // The same id opens again: nothing leaked.
    await expect(open(qmp)).resolves.toMatchObject({ deviceId: 'xdpvm-port-usbip-b1d5' });
  });

  it('a port that does not go: the error says how long it waited, and a later close finishes the job', async () => {
    const qmp = setup();
    const ch = await open(qmp);
    qmp.deviceDelEmits = false;
    await expect(closeChannel(qmp, ch.id, { timeoutMs: 50 })).rejects.toThrow(/channel usbip-b1d5: QEMU did not report xdpvm-port-usbip-b1d5 deleted within 50 ms/);
    expect(qmp.chardevs.has(ch.chardevId)).toBe(true);
    qmp.removePort(ch.deviceId);
    expect(await listChannels(qmp)).toMatchObject([{ id: ch.id, deviceId: undefined, chardevId: ch.chardevId, socketPath: ch.socketPath }]);
    expect(await closeChannel(qmp, ch.id)).toBe(true);
    expect(qmp.chardevs.size).toBe(0);
  });

  it('refuses an unsafe id', async () => {
    await expect(closeChannel(setup(), 'a/b')).rejects.toThrow(/channel id "a\/b" must start with a letter/);
  });
});

describe('listChannels', () => {
  it("lists ours only, with name, bus, socket and whether a host is connected, so a restarted daemon reconnects", async () => {
    const qmp = setup();
    qmp.ports.set('boot-port', { bus: 'vser0.0', chardev: 'c0', name: 'io.github.xdp_vm.portal' });
    const a = await open(qmp, spec('usbip-a', 'io.github.xdp_vm.usbip.a'));
    await open(qmp, spec('usbip-b', 'io.github.xdp_vm.usbip.b'));
    a.socket.destroy();
    await expect.poll(() => qmp.chardevs.get(a.chardevId)!.clients.size).toBe(0);
    const listed = await listChannels(qmp);
    expect(listed).toEqual([
      { id: 'usbip-a', deviceId: 'xdpvm-port-usbip-a', name: 'io.github.xdp_vm.usbip.a', bus: 'vser0.0', chardevId: 'xdpvm-portc-usbip-a', socketPath: a.socketPath, hostConnected: false, guestOpen: false },
      expect.objectContaining({ id: 'usbip-b', hostConnected: true }),
    ]);
    const again = await connectChannel(listed[0]!.socketPath!);
    sockets.push(again);
    await expect.poll(() => qmp.chardevs.get(a.chardevId)!.clients.size).toBe(1);
  });
});

describe('connectChannel', () => {
  it('names the socket it could not reach', async () => {
    setup();
    await expect(connectChannel(path.join(dir, 'none.sock'), { timeoutMs: 50 })).rejects.toThrow(/ENOENT.*none\.sock/);
  });
});
