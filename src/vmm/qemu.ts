import { z } from 'zod';
import { childLogger, type Logger } from '../log.js';
import {
  assertSafeId,
  VmmError,
  type AttachedShare,
  type AttachOptions,
  type DetachOptions,
  type DeviceHandle,
  type DeviceInfo,
  type NetCapability,
  type NetSpec,
  type ShareInfo,
  type ShareCapability,
  type ShareSpec,
  type VmmAdapter,
} from './adapter.js';
import { AdapterBase, checkNetSpec, checkShareSpec } from './adapter-base.js';
import { QmpClient, QmpError, type QmpEvent } from './qmp.js';

/**
 * The QEMU adapter: virtiofs shares and NICs hot-plugged over QMP onto free
 * pcie-root-ports of a q35 machine (one port per concurrently plugged device,
 * ACPI hot-plug).
 */

export const QomProperty = z.object({ name: z.string(), type: z.string() });
export type QomProperty = z.infer<typeof QomProperty>;
const QomList = z.array(QomProperty);

export interface QemuAdapterOptions {
  /** The VM's name, for logs. */
  name?: string;
  logger?: Logger;
  /** Only ever plug into these root port ids; default: every pcie-root-port that has an id. */
  rootPorts?: readonly string[];
  /** Disconnect the QMP client on close(); true when the adapter opened it itself. */
  ownsClient?: boolean;
}

const DEVICE_PREFIX = 'xdpvm-fs-';
const NIC_PREFIX = 'xdpvm-net-';
const NETDEV_PREFIX = 'xdpvm-nd-';
const CHARDEV_PREFIX = 'xdpvm-fsc-';
const TAPFD_PREFIX = 'xdpvm-tapfd-';
const PERIPHERAL = '/machine/peripheral';
const PERIPHERAL_ANON = '/machine/peripheral-anon';
/** The virtio-fs config space holds the tag in 36 bytes. */

interface Tracked {
  spec: ShareSpec;
  deviceId: string;
  chardevId: string;
  port: string | undefined;
}

export function shareDeviceId(id: string): string {
  return `${DEVICE_PREFIX}${id}`;
}

export function shareChardevId(id: string): string {
  return `${CHARDEV_PREFIX}${id}`;
}

export function nicDeviceId(id: string): string {
  return `${NIC_PREFIX}${id}`;
}

export function nicNetdevId(id: string): string {
  return `${NETDEV_PREFIX}${id}`;
}


/** The name a tap's descriptor has in QEMU's monitor between `getfd` and the `netdev_add` that takes it. */
export function tapFdName(id: string): string {
  return `${TAPFD_PREFIX}${id}`;
}

/**
 * The netdev_add arguments for a NIC's backend.
 * - QEMU 7.2's `stream` netdev (NetdevStreamOptions: addr, a flat
 *   SocketAddress; server) connects to a Unix socket such as passt's;
 *   `server: false` makes QEMU the client.
 * - A `tap` netdev (NetdevTapOptions) takes `fd`, the name `getfd` gave the
 *   descriptor; QEMU then opens nothing itself and runs no script.
 * - A `user` netdev (NetdevUserOptions) is QEMU's own slirp, for when passt
 *   is not installed: `hostfwd` entries are `tcp:127.0.0.1:HOST-:GUEST`
 *   (an empty guest address is slirp's first DHCP lease, 10.0.2.15).
 */
export function netdevArgs(spec: NetSpec): Record<string, unknown> {
  const b = spec.backend;
  if (b.type === 'tap') {
    if (b.fd === undefined) throw new VmmError(`NIC ${spec.id}: a tap NIC needs the tap's descriptor from the privileged helper; QEMU is not given the right to open ${b.tapName} itself`);
    return { type: 'tap', id: nicNetdevId(spec.id), fd: tapFdName(spec.id) };
  }
  if (b.type === 'user') {
    return { type: 'user', id: nicNetdevId(spec.id), ...(b.forwards.length ? { hostfwd: b.forwards.map((f) => ({ str: `tcp:127.0.0.1:${f.host}-:${f.guest}` })) } : {}) };
  }
  return { type: 'stream', id: nicNetdevId(spec.id), server: false, addr: { type: 'unix', path: b.socketPath } };
}

export function nicDeviceArgs(spec: NetSpec, port: string): Record<string, unknown> {
  return { driver: 'virtio-net-pci', id: nicDeviceId(spec.id), netdev: nicNetdevId(spec.id), bus: port, ...(spec.mac ? { mac: spec.mac } : {}) };
}

interface TrackedNic {
  deviceId: string;
  netdevId: string;
  port: string | undefined;
}

export class QemuAdapter extends AdapterBase implements VmmAdapter {
  readonly kind = 'qemu' as const;
  /** Virtiofs shares: the one capability this adapter has so far. */
  readonly shares: ShareCapability = this;
  /** NICs on a stream socket (passt) or on a tap whose descriptor we are handed. */
  readonly net: NetCapability = this;
  /** passt when it is installed; QEMU's own slirp, with forwards, otherwise. */
  readonly userNetworking = { modes: ['passt', 'own'], ownForwards: true } as const;
  private readonly ourShares = new Map<string, Tracked>();
  private readonly ourNics = new Map<string, TrackedNic>();
  /** Device ids we asked QEMU to remove, so their DEVICE_DELETED is not "unexpected". */
  private readonly detaching = new Set<string>();
  private readonly offs: Array<() => void>;
  protected readonly log: Logger;

  /** Open a QMP connection of our own and wrap it. */
  static async connect(socketPath: string, opts: QemuAdapterOptions & { timeoutMs?: number } = {}): Promise<QemuAdapter> {
    const qmp = new QmpClient({ ...(opts.name ? { name: opts.name } : {}), ...(opts.logger ? { logger: opts.logger } : {}) });
    await qmp.connect(socketPath, opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs });
    return new QemuAdapter(qmp, { ...opts, ownsClient: opts.ownsClient ?? true });
  }

  constructor(
    readonly qmp: QmpClient,
    private readonly opts: QemuAdapterOptions = {},
  ) {
    super();
    this.log = opts.logger ?? childLogger({ component: 'vmm-qemu', vm: opts.name });
    this.offs = [qmp.onEvent((e) => this.onQmpEvent(e)), qmp.onDisconnect((err) => this.markGone(err?.message ?? 'QMP closed'))];
  }

  async attachShare(spec: ShareSpec, opts: AttachOptions = {}): Promise<AttachedShare> {
    checkShareSpec(spec);
    return this.serialized(() => this.doAttachShare(spec, opts));
  }

  async detachShare(id: string, opts: DetachOptions = {}): Promise<void> {
    assertSafeId('share', id);
    return this.serialized(() => this.doDetachShare(id, opts));
  }

  async listShares(): Promise<ShareInfo[]> {
    const found: ShareInfo[] = [];
    for (const d of await this.devicesOfType('vhost-user-fs-pci', DEVICE_PREFIX)) {
      const tag = await this.qomGetString(d.path, 'tag');
      const attachedHere = d.id !== undefined && this.ourShares.get(d.id)?.deviceId === d.deviceId;
      found.push({ id: d.id, tag, deviceId: d.deviceId, location: d.location, attachedHere });
    }
    return found;
  }

  /**
   * Every device of a QOM type the VM has, named (ours when the id carries
   * `prefix`) or anonymous (started with it), with the root port it sits on,
   * sorted by device id.
   */
  private async devicesOfType(type: string, prefix: string): Promise<{ path: string; deviceId: string | undefined; id: string | undefined; location: string | undefined }[]> {
    const found = [];
    for (const base of [PERIPHERAL, PERIPHERAL_ANON]) {
      for (const child of await this.qomList(base)) {
        if (child.type !== `child<${type}>`) continue;
        const path = `${base}/${child.name}`;
        const deviceId = base === PERIPHERAL ? child.name : undefined;
        const id = deviceId?.startsWith(prefix) ? deviceId.slice(prefix.length) : undefined;
        found.push({ path, deviceId, id, location: portOfBus(await this.qomGetString(path, 'parent_bus')) });
      }
    }
    return found.sort((a, b) => (a.deviceId ?? '').localeCompare(b.deviceId ?? ''));
  }

  /** Root ports (by id) with nothing plugged into them, in declaration order. */
  async freeRootPorts(): Promise<string[]> {
    const ports = (await this.qomList(PERIPHERAL))
      .filter((c) => c.type === 'child<pcie-root-port>')
      .map((c) => c.name)
      .filter((name) => !this.opts.rootPorts || this.opts.rootPorts.includes(name));
    const free: string[] = [];
    for (const port of ports) {
      const bus = (await this.qomList(`${PERIPHERAL}/${port}`)).find((c) => /^child<PCIE?>$/.test(c.type));
      if (!bus) continue;
      const occupants = (await this.qomList(`${PERIPHERAL}/${port}/${bus.name}`)).filter((c) => c.name.startsWith('child['));
      if (occupants.length === 0) free.push(port);
    }
    return free;
  }

  async attachNet(spec: NetSpec, opts: AttachOptions = {}): Promise<DeviceHandle> {
    checkNetSpec(spec);
    const netdev = netdevArgs(spec);
    return this.serialized(() => this.doAttachNet(spec, netdev, opts));
  }

  async detachNet(id: string, opts: DetachOptions = {}): Promise<void> {
    assertSafeId('NIC', id);
    return this.serialized(() => this.doDetachNet(id, opts));
  }

  /** Every virtio-net device the VM has, ours (by our naming) and those it was started with. */
  async listNet(): Promise<DeviceInfo[]> {
    return (await this.devicesOfType('virtio-net-pci', NIC_PREFIX)).map((d) => ({ kind: 'net', id: d.id, deviceId: d.deviceId, location: d.location }));
  }

  private async doAttachNet(spec: NetSpec, netdev: Record<string, unknown>, opts: AttachOptions): Promise<DeviceHandle> {
    const deviceId = nicDeviceId(spec.id);
    const netdevId = nicNetdevId(spec.id);
    if (this.ourNics.has(spec.id) || (await this.qomList(PERIPHERAL)).some((c) => c.name === deviceId)) {
      throw new VmmError(`NIC ${spec.id}: device ${deviceId} is already in the VM; detach it first`);
    }
    const port = (await this.freeRootPorts())[0];
    if (!port) throw new VmmError(`NIC ${spec.id}: no free pcie-root-port; start the VM with one '-device pcie-root-port,id=…' per device plugged at the same time`);
    const call = { ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}), ...(opts.signal ? { signal: opts.signal } : {}) };
    const fd = spec.backend.type === 'tap' ? spec.backend.fd : undefined;
    if (fd !== undefined) {
      try {
        await this.qmp.execute('getfd', { fdname: tapFdName(spec.id) }, { ...call, fds: [fd] });
      } catch (cause) {
        throw new VmmError(`NIC ${spec.id}: QEMU did not take the tap's descriptor (getfd): ${describe(cause)}`, { cause });
      }
    }
    try {
      await this.qmp.execute('netdev_add', netdev, call);
    } catch (cause) {
      // netdev_add takes the named fd only when it succeeds.
      if (fd !== undefined) await this.qmp.execute('closefd', { fdname: tapFdName(spec.id) }).catch(() => undefined);
      throw new VmmError(`NIC ${spec.id}: QEMU could not connect its network backend (netdev_add): ${describe(cause)}`, { cause });
    }
    try {
      await this.qmp.execute('device_add', nicDeviceArgs(spec, port), call);
    } catch (cause) {
      await this.removeNetdev(netdevId).catch((err: unknown) => this.log.warn({ err }, 'rollback of netdev failed'));
      throw new VmmError(`NIC ${spec.id}: device_add on ${port} failed: ${describe(cause)}`, { cause });
    }
    this.ourNics.set(spec.id, { deviceId, netdevId, port });
    this.log.info({ nic: spec.id, deviceId, port, mac: spec.mac }, 'NIC attached');
    return { kind: 'net', id: spec.id, deviceId, location: port };
  }

  private async doDetachNet(id: string, opts: DetachOptions): Promise<void> {
    const nic = this.ourNics.get(id) ?? (await this.adoptNic(id));
    if (!nic) throw new VmmError(`NIC ${id} is not attached to this VM`);
    await opts.beforeDetach?.();
    const timeoutMs = opts.timeoutMs ?? 10_000;
    this.detaching.add(nic.deviceId);
    try {
      const deleted = this.qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data.device === nic.deviceId, { timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) });
      deleted.catch(() => undefined);
      if (!(await this.requestUnplug(nic.deviceId))) {
        await deleted.catch((cause: unknown) => {
          throw new VmmError(`NIC ${id}: QEMU did not report ${nic.deviceId} deleted within ${timeoutMs} ms; ACPI hot-unplug needs a running guest that releases the device`, { cause });
        });
      }
      // Only once the device is gone is its netdev free; deleting it closes the backend's socket.
      await this.removeNetdev(nic.netdevId);
    } finally {
      this.detaching.delete(nic.deviceId);
    }
    this.ourNics.delete(id);
    this.log.info({ nic: id, deviceId: nic.deviceId }, 'NIC detached');
    this.emit({ type: 'device-detached', kind: 'net', id, deviceId: nic.deviceId, expected: true });
  }

  /** netdev_del, where a netdev already gone is fine. */
  private async removeNetdev(netdevId: string): Promise<void> {
    await this.qmp.execute('netdev_del', { id: netdevId }).catch((cause: unknown) => {
      if (cause instanceof QmpError && (cause.errorClass === 'DeviceNotFound' || /not found/i.test(cause.errorDesc ?? ''))) return;
      throw new VmmError(`netdev_del ${netdevId} failed: ${describe(cause)}`, { cause });
    });
  }

  /** A NIC left by an earlier daemon run, recognised by our device naming. */
  private async adoptNic(id: string): Promise<TrackedNic | undefined> {
    const deviceId = nicDeviceId(id);
    if (!(await this.qomList(PERIPHERAL)).some((c) => c.name === deviceId)) return undefined;
    const path = `${PERIPHERAL}/${deviceId}`;
    return { deviceId, netdevId: await this.qomGetString(path, 'netdev'), port: portOfBus(await this.qomGetString(path, 'parent_bus')) };
  }

  async close(): Promise<void> {
    for (const off of this.offs) off();
    if (this.opts.ownsClient) await this.qmp.disconnect();
    this.dropListeners();
  }

  private async doAttachShare(spec: ShareSpec, opts: AttachOptions): Promise<AttachedShare> {
    if (this.ourShares.has(spec.id)) throw new VmmError(`share ${spec.id} is already attached`);
    const deviceId = shareDeviceId(spec.id);
    const chardevId = shareChardevId(spec.id);
    const present = await this.qomList(PERIPHERAL);
    if (present.some((c) => c.name === deviceId)) {
      throw new VmmError(
        `share ${spec.id}: device ${deviceId} is already in the VM (started with it, or left by an earlier daemon); ` +
          'detach it or leave it alone',
      );
    }
    const port = (await this.freeRootPorts())[0];
    if (!port) {
      throw new VmmError(
        `share ${spec.id}: no free pcie-root-port; start the VM with one '-device pcie-root-port,id=…' ` +
          'per device plugged at the same time',
      );
    }
    const call = {
      ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    };
    const backend = { type: 'socket', data: { addr: { type: 'unix', data: { path: spec.socketPath } }, server: false } };
    try {
      await this.qmp.execute('chardev-add', { id: chardevId, backend }, call);
    } catch (cause) {
      throw new VmmError(`share ${spec.id}: cannot connect QEMU to virtiofsd at ${spec.socketPath}: ${describe(cause)}`, { cause });
    }
    const device = {
      driver: 'vhost-user-fs-pci',
      id: deviceId,
      chardev: chardevId,
      tag: spec.tag,
      bus: port,
      'queue-size': spec.queueSize ?? 1024,
    };
    try {
      await this.qmp.execute('device_add', device, call);
    } catch (cause) {
      await this.qmp
        .execute('chardev-remove', { id: chardevId })
        .catch((err: unknown) => this.log.warn({ err }, 'rollback of chardev failed'));
      throw new VmmError(`share ${spec.id}: device_add on ${port} failed: ${describe(cause)}`, { cause });
    }
    this.ourShares.set(spec.id, { spec, deviceId, chardevId, port });
    this.log.info({ share: spec.id, tag: spec.tag, deviceId, port }, 'share attached');
    return { id: spec.id, tag: spec.tag, deviceId, location: port };
  }

  private async doDetachShare(id: string, opts: DetachOptions): Promise<void> {
    const share = this.ourShares.get(id) ?? (await this.adopt(id));
    if (!share) throw new VmmError(`share ${id} is not attached to this VM`);
    await opts.beforeDetach?.();
    const timeoutMs = opts.timeoutMs ?? 10_000;
    this.detaching.add(share.deviceId);
    try {
      // The virtio-backend child is deleted first and reported with no `device`;
      // only the proxy's own event means the chardev is free.
      const deleted = this.qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data.device === share.deviceId, {
        timeoutMs,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      deleted.catch(() => undefined);
      const alreadyGone = await this.requestUnplug(share.deviceId);
      if (!alreadyGone) {
        try {
          await deleted;
        } catch (cause) {
          throw new VmmError(
            `share ${id}: QEMU did not report ${share.deviceId} deleted within ${timeoutMs} ms; ` +
              'ACPI hot-unplug needs a running guest that releases the device',
            { cause },
          );
        }
      }
      await this.qmp.execute('chardev-remove', { id: share.chardevId }).catch((cause: unknown) => {
        if (cause instanceof QmpError && /not found/i.test(cause.errorDesc ?? '')) return;
        throw new VmmError(`share ${id}: chardev-remove ${share.chardevId} failed: ${describe(cause)}`, { cause });
      });
    } finally {
      this.detaching.delete(share.deviceId);
    }
    this.ourShares.delete(id);
    this.log.info({ share: id, deviceId: share.deviceId }, 'share detached');
    this.emit({ type: 'device-detached', kind: 'share', id, deviceId: share.deviceId, expected: true });
  }

  /** Ask QEMU to unplug; true when the device was already gone. */
  private async requestUnplug(deviceId: string): Promise<boolean> {
    try {
      await this.qmp.execute('device_del', { id: deviceId });
      return false;
    } catch (cause) {
      if (!(cause instanceof QmpError) || cause.reason !== 'qemu-error') throw cause;
      // A retry after a timed-out detach: the first request is still pending in the guest.
      if (/already in the process of unplug/i.test(cause.errorDesc ?? '')) return false;
      if (cause.errorClass === 'DeviceNotFound') return true;
      throw new VmmError(`device_del ${deviceId} failed: ${cause.errorDesc ?? cause.message}`, { cause });
    }
  }

  /** A share left by an earlier daemon run, recognised by our device naming. */
  private async adopt(id: string): Promise<Tracked | undefined> {
    const deviceId = shareDeviceId(id);
    const path = `${PERIPHERAL}/${deviceId}`;
    if (!(await this.qomList(PERIPHERAL)).some((c) => c.name === deviceId)) return undefined;
    const chardevId = await this.qomGetString(path, 'chardev');
    const tag = await this.qomGetString(path, 'tag');
    const port = portOfBus(await this.qomGetString(path, 'parent_bus'));
    return { spec: { id, tag, socketPath: '' }, deviceId, chardevId, port };
  }

  private onQmpEvent(event: QmpEvent): void {
    if (event.event !== 'DEVICE_DELETED' || typeof event.data.device !== 'string') return;
    const deviceId = event.data.device;
    if (this.detaching.has(deviceId)) return;
    for (const [id, nic] of this.ourNics) {
      if (nic.deviceId !== deviceId) continue;
      this.ourNics.delete(id);
      this.log.warn({ nic: id, deviceId }, 'NIC removed without our asking');
      void this.removeNetdev(nic.netdevId).catch((err: unknown) => this.log.warn({ err }, 'netdev_del after unexpected unplug failed'));
      this.emit({ type: 'device-detached', kind: 'net', id, deviceId, expected: false });
    }
    for (const [id, share] of this.ourShares) {
      if (share.deviceId !== deviceId) continue;
      this.ourShares.delete(id);
      this.log.warn({ share: id, deviceId }, 'share removed without our asking');
      void this.qmp
        .execute('chardev-remove', { id: share.chardevId })
        .catch((err: unknown) => this.log.warn({ err }, 'chardev-remove after unexpected unplug failed'));
      this.emit({ type: 'device-detached', kind: 'share', id, deviceId, expected: false });
    }
  }


  /** One hot-plug operation at a time: two attaches must not pick the same free port. */

  private async qomList(path: string): Promise<QomProperty[]> {
    try {
      return await this.qmp.execute('qom-list', { path }, { result: QomList });
    } catch (cause) {
      // peripheral-anon does not exist until the VM has an anonymous device.
      if (cause instanceof QmpError && cause.errorClass === 'DeviceNotFound') return [];
      throw cause;
    }
  }

  private qomGetString(path: string, property: string): Promise<string> {
    return this.qmp.execute('qom-get', { path, property }, { result: z.string() });
  }
}

/**
 * A device's `parent_bus` as a place a human recognises: the root port's id for a
 * port's bus (`/machine/peripheral/rp1/rp1` → `rp1`), else the bus name (`pcie.0`).
 */
function portOfBus(busPath: string): string | undefined {
  const parts = busPath.split('/').filter(Boolean);
  if (parts[0] === 'machine' && parts[1] === 'peripheral' && parts.length >= 4) return parts[2];
  return parts.at(-1);
}

function describe(err: unknown): string {
  if (err instanceof QmpError) return err.errorDesc ?? err.message;
  return err instanceof Error ? err.message : String(err);
}
