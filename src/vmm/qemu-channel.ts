import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { portNameProblem } from '../guest/vport.js';
import { assertSafeId, VmmError } from './adapter.js';
import { QmpError, type QmpClient } from './qmp.js';
import { callOptions, describe, freeRootPorts, PERIPHERAL, PERIPHERAL_ANON, qomGetString, qomList } from './qom.js';

/**
 * Raw byte channels into a QEMU guest: one hot-plugged `virtserialport` per
 * channel (a USB/IP stream per attached device), made over the VM's own
 * QMP, so nobody edits the VM's config. The host end is a Unix socket the
 * daemon connects to; the guest's root agent opens the port's /dev/vportNpM
 * (src/guest/vport.ts). Bytes flow with backpressure both ways and no framing
 * of ours.
 *
 * Who listens: QEMU (`server: true, wait: false`), the daemon connects.
 * - QEMU never blocks on the daemon: chardev-add binds and returns; a
 *   connection is accepted in QEMU's main loop when it comes, and a daemon
 *   that stops reading only throttles the port (the guest's writes wait),
 *   never QEMU. The other way round (`server: false`), chardev-add makes
 *   QEMU connect, and in 7.2 without `reconnect` that connect is
 *   synchronous in the main loop: measured here, against a listener that
 *   does not accept and whose backlog is full, chardev-add and every QMP
 *   command after it got no answer until the listener went.
 * - A dead daemon cannot wedge the VM: QEMU sees the hang-up, the guest's
 *   port reads EOF (host not connected), and QEMU listens again, so a
 *   restarted daemon finds the channel with listChannels and reconnects
 *   (connectChannel). With QEMU as the client, the channel would be dead
 *   for good once the daemon's end went.
 * - `wait: false` matters: with `wait: true`, chardev-add itself would block
 *   the monitor until someone connected.
 * - QEMU makes the socket file, replacing whatever is at the path (a
 *   regular file too, measured), and unlinks it at chardev-remove. It admits
 *   one client at a time. So the path must be in a directory only the
 *   daemon writes, its own 0700 runtime directory: whoever connects gets the
 *   stream.
 *
 * Measured against QEMU 7.2 here: a virtserialport's device_del needs no
 * guest (QEMU tells the guest's driver and removes it, one DEVICE_DELETED
 * naming the port, at once, even with the VM paused); chardev-remove of a
 * chardev still behind a port is "Chardev '…' is busy"; a port name is
 * unique across the machine ("A port already exists by name …"), and QEMU
 * takes names with '/' in them, so the name is checked here.
 */

export const CHANNEL_DEVICE_PREFIX = 'xdpvm-port-';
export const CHANNEL_CHARDEV_PREFIX = 'xdpvm-portc-';
/** The virtio-serial controller we hot-plug into a VM that has none with room. */
export const VSER_ID = 'xdpvm-vser';
const PORT_DRIVER = 'virtserialport';
const VSER_DRIVER = 'virtio-serial-pci';
/** sun_path is 108 bytes with its NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
const PORTS_EXHAUSTED = /virtio-serial-bus: (maximum port number reached|out-of-range port id specified)/i;

/** What this module uses of the QMP client: enough for a fake in tests. */
export type ChannelQmp = Pick<QmpClient, 'execute' | 'waitForEvent'>;

export interface ChannelSpec {
  /** Ours: QEMU ids are derived from it (`xdpvm-port-<id>`, `xdpvm-portc-<id>`). */
  id: string;
  /** The port's name, as the guest sees it in /sys/class/virtio-ports/*\/name. */
  name: string;
  /** Where QEMU listens for the daemon. */
  socketPath: string;
}

export interface ChannelCallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface OpenChannelOptions extends ChannelCallOptions {
  /** Only hot-plug a controller onto these root port ids; default any free pcie-root-port. */
  rootPorts?: readonly string[];
}

export interface OpenedChannel {
  /** The host end, connected. */
  socket: net.Socket;
  id: string;
  name: string;
  socketPath: string;
  deviceId: string;
  chardevId: string;
  /** The virtio-serial bus the port is on, e.g. `vser0.0`. */
  bus: string;
  /** Set when this open hot-plugged our controller (it stays for later channels). */
  controllerPort: string | undefined;
}

export interface ChannelInfo {
  id: string;
  /** undefined for a chardev whose port is gone (a close cut short); closeChannel finishes it. */
  deviceId: string | undefined;
  name: string | undefined;
  bus: string | undefined;
  /** undefined for a port whose chardev is gone or not ours. */
  chardevId: string | undefined;
  socketPath: string | undefined;
  /** A daemon is connected to the socket. */
  hostConnected: boolean;
  /** The guest has the port open. */
  guestOpen: boolean;
}

export function channelDeviceId(id: string): string {
  return `${CHANNEL_DEVICE_PREFIX}${id}`;
}

export function channelChardevId(id: string): string {
  return `${CHANNEL_CHARDEV_PREFIX}${id}`;
}

/** The chardev-add backend: QEMU listens on the socket and does not wait for a client. */
export function channelBackend(socketPath: string): Record<string, unknown> {
  return { type: 'socket', data: { addr: { type: 'unix', data: { path: socketPath } }, server: true, wait: false } };
}

/** Refuse a spec before anything reaches QEMU. */
export function checkChannelSpec(spec: ChannelSpec): void {
  assertSafeId('channel', spec.id);
  const problem = portNameProblem(spec.name);
  if (problem) throw new VmmError(`channel ${spec.id}: ${problem}`);
  const bytes = Buffer.byteLength(spec.socketPath);
  if (!spec.socketPath.startsWith('/') || spec.socketPath.includes('\0') || bytes > MAX_SOCKET_PATH_BYTES) {
    throw new VmmError(`channel ${spec.id}: socket path ${JSON.stringify(spec.socketPath)} must be absolute, without NUL, and at most ${MAX_SOCKET_PATH_BYTES} bytes (it is ${bytes})`);
  }
}

/**
 * Hot-plug a channel and connect to its host end: chardev-add, then
 * device_add virtserialport on the VM's virtio-serial bus (the first with a
 * free port number), or on our own controller, hot-plugged on a free
 * pcie-root-port when the VM has no bus with room. Anything done is undone
 * when a later step fails.
 */
export async function openChannel(qmp: ChannelQmp, spec: ChannelSpec, opts: OpenChannelOptions = {}): Promise<OpenedChannel> {
  checkChannelSpec(spec);
  return serialized(qmp, () => doOpen(qmp, spec, opts));
}

async function doOpen(qmp: ChannelQmp, spec: ChannelSpec, opts: OpenChannelOptions): Promise<OpenedChannel> {
  const deviceId = channelDeviceId(spec.id);
  const chardevId = channelChardevId(spec.id);
  const call = callOptions(opts);
  if ((await qomList(qmp, PERIPHERAL)).some((c) => c.name === deviceId)) {
    throw new VmmError(`channel ${spec.id}: device ${deviceId} is already in the VM; close it first`);
  }
  try {
    await qmp.execute('chardev-add', { id: chardevId, backend: channelBackend(spec.socketPath) }, call);
  } catch (cause) {
    throw new VmmError(`channel ${spec.id}: QEMU could not listen on ${spec.socketPath} (chardev-add ${chardevId}): ${describe(cause)}`, { cause });
  }
  let placed: { bus: string; controllerPort: string | undefined };
  try {
    placed = await plugPort(qmp, spec, { driver: PORT_DRIVER, id: deviceId, chardev: chardevId, name: spec.name }, opts);
  } catch (err) {
    await removeChardev(qmp, spec.id, chardevId).catch(() => undefined);
    throw err;
  }
  let socket: net.Socket;
  try {
    socket = await connectChannel(spec.socketPath, { timeoutMs: opts.timeoutMs ?? 5_000 });
  } catch (cause) {
    await doClose(qmp, spec.id, {}).catch(() => undefined);
    throw new VmmError(`channel ${spec.id}: cannot connect to QEMU's end at ${spec.socketPath}: ${describe(cause)}; the port was taken out again`, { cause });
  }
  return { socket, id: spec.id, name: spec.name, socketPath: spec.socketPath, deviceId, chardevId, ...placed };
}

/** device_add the port on the first bus with room; our controller when there is none. */
async function plugPort(qmp: ChannelQmp, spec: ChannelSpec, port: Record<string, unknown>, opts: OpenChannelOptions): Promise<{ bus: string; controllerPort: string | undefined }> {
  const call = callOptions(opts);
  const tryBus = async (bus: string): Promise<boolean> => {
    try {
      await qmp.execute('device_add', { ...port, bus }, call);
      return true;
    } catch (cause) {
      // Every port number of this controller is taken. QEMU 7.2 says "Out-of-range port id specified, max.
      // allowed: 30" at the default 31 ports (its free-id search runs past max_ports to the bitmap's end),
      // and "Maximum port number reached" when max_ports fills its bitmap words exactly.
      if (cause instanceof QmpError && PORTS_EXHAUSTED.test(cause.errorDesc ?? '')) return false;
      throw new VmmError(`channel ${spec.id}: device_add ${PORT_DRIVER} on ${bus} failed: ${describe(cause)}`, { cause });
    }
  };
  const buses = await serialBuses(qmp);
  for (const { bus } of buses) if (await tryBus(bus)) return { bus, controllerPort: undefined };
  const names = buses.map((b) => b.bus).join(', ');
  const full = buses.length === 0 ? 'the VM has no virtio-serial controller' : buses.length === 1 ? `its virtio-serial bus (${names}) has no free port` : `its virtio-serial buses (${names}) have no free port`;
  if (buses.some((b) => b.controller === VSER_ID)) throw new VmmError(`channel ${spec.id}: ${full}, ours included; close a channel first`);
  const rootPort = (await freeRootPorts(qmp, opts.rootPorts))[0];
  if (!rootPort) {
    throw new VmmError(`channel ${spec.id}: ${full}, and there is no free pcie-root-port to hot-plug one on; start the VM with '-device ${VSER_DRIVER}' or one more '-device pcie-root-port,id=…'`);
  }
  try {
    await qmp.execute('device_add', { driver: VSER_DRIVER, id: VSER_ID, bus: rootPort }, call);
  } catch (cause) {
    throw new VmmError(`channel ${spec.id}: ${full}; hot-plugging our ${VSER_DRIVER} ${VSER_ID} on ${rootPort} failed: ${describe(cause)}`, { cause });
  }
  const bus = `${VSER_ID}.0`;
  if (!(await tryBus(bus))) throw new VmmError(`channel ${spec.id}: our new controller ${VSER_ID} on ${rootPort} has no free port`);
  return { bus, controllerPort: rootPort };
}

export interface ConnectChannelOptions {
  timeoutMs?: number;
}

/**
 * Connect to a channel's host end, e.g. again after a daemon restart. QEMU
 * serves one client at a time: a second connect waits in its backlog until
 * the first hangs up, so this fails on the timeout then.
 */
export async function connectChannel(socketPath: string, opts: ConnectChannelOptions = {}): Promise<net.Socket> {
  const timeoutMs = opts.timeoutMs ?? 5_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const socket = net.createConnection({ path: socketPath });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(Object.assign(new Error(`no connection within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })), Math.max(1, deadline - Date.now()));
        socket.once('connect', () => (clearTimeout(timer), resolve()));
        socket.once('error', (err) => (clearTimeout(timer), reject(err)));
      });
      return socket;
    } catch (err) {
      socket.destroy();
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ECONNREFUSED' && code !== 'ENOENT') || Date.now() >= deadline) throw err;
      await sleep(10);
    }
  }
}

/**
 * Take a channel out: device_del, the DEVICE_DELETED that names the port,
 * then chardev-remove (which closes the daemon's connection and unlinks the
 * socket). Whatever part is already gone is skipped, so a close cut short
 * can be finished; resolves false when there was nothing left to remove.
 */
export async function closeChannel(qmp: ChannelQmp, id: string, opts: ChannelCallOptions = {}): Promise<boolean> {
  assertSafeId('channel', id);
  return serialized(qmp, () => doClose(qmp, id, opts));
}

async function doClose(qmp: ChannelQmp, id: string, opts: ChannelCallOptions): Promise<boolean> {
  const deviceId = channelDeviceId(id);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  let removed = false;
  if ((await qomList(qmp, PERIPHERAL)).some((c) => c.name === deviceId)) {
    const deleted = qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data.device === deviceId, { timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) });
    deleted.catch(() => undefined);
    let requested = true;
    try {
      await qmp.execute('device_del', { id: deviceId }, callOptions(opts));
    } catch (cause) {
      if (!(cause instanceof QmpError && cause.errorClass === 'DeviceNotFound')) {
        throw new VmmError(`channel ${id}: device_del ${deviceId} failed: ${describe(cause)}`, { cause });
      }
      requested = false;
    }
    if (requested) {
      await deleted.catch((cause: unknown) => {
        if (cause instanceof QmpError && cause.reason === 'aborted') throw new VmmError(`channel ${id}: closing was cancelled before QEMU reported ${deviceId} deleted`, { cause });
        throw new VmmError(`channel ${id}: QEMU did not report ${deviceId} deleted within ${timeoutMs} ms (a virtserialport needs no guest to go, so QEMU itself is stuck): ${describe(cause)}`, { cause });
      });
    }
    removed = true;
  }
  return (await removeChardev(qmp, id, channelChardevId(id))) || removed;
}

/** chardev-remove; false when it was not there. */
async function removeChardev(qmp: ChannelQmp, id: string, chardevId: string): Promise<boolean> {
  try {
    await qmp.execute('chardev-remove', { id: chardevId });
    return true;
  } catch (cause) {
    if (cause instanceof QmpError && /not found/i.test(cause.errorDesc ?? '')) return false;
    throw new VmmError(`channel ${id}: chardev-remove ${chardevId} failed: ${describe(cause)}`, { cause });
  }
}

const ChardevInfoList = z.array(z.object({ label: z.string(), filename: z.string(), 'frontend-open': z.boolean() }));

/**
 * Our channels in the VM, by our id prefixes, for a daemon that starts
 * while VMs run: each port with its name, bus and socket, and any chardev
 * of ours whose port is gone, sorted by id.
 */
export async function listChannels(qmp: ChannelQmp): Promise<ChannelInfo[]> {
  const chardevs = new Map((await qmp.execute('query-chardev', undefined, { result: ChardevInfoList })).map((c) => [c.label, c]));
  const found = new Map<string, ChannelInfo>();
  for (const child of await qomList(qmp, PERIPHERAL)) {
    if (child.type !== `child<${PORT_DRIVER}>` || !child.name.startsWith(CHANNEL_DEVICE_PREFIX)) continue;
    const path = `${PERIPHERAL}/${child.name}`;
    const chardevId = await qomGetString(qmp, path, 'chardev');
    const chardev = chardevs.get(chardevId);
    found.set(child.name.slice(CHANNEL_DEVICE_PREFIX.length), {
      id: child.name.slice(CHANNEL_DEVICE_PREFIX.length),
      deviceId: child.name,
      name: (await qomGetString(qmp, path, 'name')) || undefined,
      bus: (await qomGetString(qmp, path, 'parent_bus')).split('/').at(-1),
      ...chardevState(chardev),
    });
  }
  for (const [label, chardev] of chardevs) {
    if (!label.startsWith(CHANNEL_CHARDEV_PREFIX)) continue;
    const id = label.slice(CHANNEL_CHARDEV_PREFIX.length);
    if (found.get(id)?.chardevId === label) continue;
    found.set(id, { id, deviceId: undefined, name: undefined, bus: undefined, ...chardevState(chardev) });
  }
  return [...found.values()].sort((a, b) => a.id.localeCompare(b.id));
}

/** query-chardev's filename for a listening socket: `disconnected:unix:PATH,server=on`, without the prefix once a client is connected. */
function chardevState(chardev: z.infer<typeof ChardevInfoList>[number] | undefined): Pick<ChannelInfo, 'chardevId' | 'socketPath' | 'hostConnected' | 'guestOpen'> {
  if (!chardev) return { chardevId: undefined, socketPath: undefined, hostConnected: false, guestOpen: false };
  const disconnected = chardev.filename.startsWith('disconnected:');
  const address = disconnected ? chardev.filename.slice('disconnected:'.length) : chardev.filename;
  const socketPath = /^unix:(.*?)(,server=on)?$/.exec(address)?.[1];
  return { chardevId: chardev.label, socketPath, hostConnected: !disconnected, guestOpen: chardev['frontend-open'] };
}

/** A virtio-serial bus and the controller it belongs to (its id, or its QOM path when anonymous). */
interface SerialBus {
  bus: string;
  controller: string;
}

const SERIAL_CONTROLLER = /^child<virtio-serial-(pci|pci-transitional|pci-non-transitional|device)>$/;

/** The VM's virtio-serial buses: its own controllers first, ours last. */
async function serialBuses(qmp: ChannelQmp): Promise<SerialBus[]> {
  const found: SerialBus[] = [];
  for (const base of [PERIPHERAL, PERIPHERAL_ANON]) {
    for (const child of await qomList(qmp, base)) {
      if (!SERIAL_CONTROLLER.test(child.type)) continue;
      const path = `${base}/${child.name}`;
      // A PCI proxy holds the virtio device as its `virtio-backend` child; the bus hangs off that.
      const inner = (await qomList(qmp, path)).some((c) => c.name === 'virtio-backend') ? `${path}/virtio-backend` : path;
      const bus = (await qomList(qmp, inner)).find((c) => c.type === 'child<virtio-serial-bus>');
      if (bus) found.push({ bus: bus.name, controller: base === PERIPHERAL ? child.name : path });
    }
  }
  return found.sort((a, b) => Number(a.controller === VSER_ID) - Number(b.controller === VSER_ID));
}

/**
 * One channel operation at a time per QMP client, so two opens cannot both
 * hot-plug a controller or take the same root port. (The adapter's own lock
 * does not cover a channel opened without it; the adapter's channels run
 * under both.)
 */
const locks = new WeakMap<object, Promise<unknown>>();
function serialized<T>(qmp: ChannelQmp, op: () => Promise<T>): Promise<T> {
  const run = (locks.get(qmp) ?? Promise.resolve()).then(op, op);
  locks.set(qmp, run.catch(() => undefined));
  return run;
}
