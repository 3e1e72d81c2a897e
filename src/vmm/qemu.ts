import { z } from 'zod';
import { childLogger, type Logger } from '../log.js';
import {
  assertSafeId,
  VmmError,
  type AttachedShare,
  type AttachOptions,
  type ChannelCapability,
  type DetachOptions,
  type DeviceHandle,
  type DeviceInfo,
  type DeviceKind,
  type NetCapability,
  type NetSpec,
  type ShareInfo,
  type ShareCapability,
  type ShareSpec,
  type UsbCapability,
  type UsbSpec,
  type VmmAdapter,
} from './adapter.js';
import { AdapterBase, checkNetSpec, checkShareSpec, checkUsbSpec } from './adapter-base.js';
import { QmpClient, QmpError, type QmpEvent } from './qmp.js';
import { closeChannel, openChannel } from './qemu-channel.js';
import { callOptions, describe, freeRootPorts, PERIPHERAL, PERIPHERAL_ANON, qomGetString, qomList, type QomProperty } from './qom.js';
export type { QomProperty } from './qom.js';
import {
  PCI_XHCI_TYPE,
  USB_HOST_DRIVER,
  USB_PREFIX,
  usbAttachFailure,
  usbDeviceId,
  usbHostArgs,
  usbName,
  usbRefusal,
  xhciArgs,
  XHCI_ID,
  xhciRefusal,
  type UsbSupport,
} from './qemu-usb.js';

/**
 * The QEMU adapter: virtiofs shares and NICs hot-plugged over QMP onto free
 * pcie-root-ports of a q35 machine (one port per concurrently plugged device,
 * ACPI hot-plug), and host USB devices passed through with usb-host on an
 * xHCI controller (the VM's own, or one we hot-plug the same way).
 */

const QomTypes = z.array(z.object({ name: z.string() }));
const AddedFd = z.object({ 'fdset-id': z.number().int(), fd: z.number().int() });

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
/** How errors and logs name each kind of device. */
const KIND_WORDS: Record<DeviceKind, string> = { share: 'share', net: 'NIC', usb: 'USB device' };

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

interface TrackedUsb {
  deviceId: string;
}

/** An xHCI controller the VM has, and the name of its USB bus for device_add. */
interface XhciController {
  bus: string;
  /** The controller's id, or its bus name when it has none (started with an anonymous one). */
  location: string;
}

/** A device QOM lists, with the root port (or bus) it sits on. */
interface QomDevice {
  path: string;
  deviceId: string | undefined;
  /** Our id, when the device id carries our prefix. */
  id: string | undefined;
  location: string | undefined;
}


export class QemuAdapter extends AdapterBase implements VmmAdapter {
  readonly kind = 'qemu' as const;
  /** Virtiofs shares on a virtiofsd the caller runs. */
  readonly shares: ShareCapability = this;
  /** NICs on a stream socket (passt) or on a tap whose descriptor we are handed. */
  readonly net: NetCapability = this;
  /** passt when it is installed; QEMU's own slirp, with forwards, otherwise. */
  readonly userNetworking = { modes: ['passt', 'own'], ownForwards: true } as const;
  /** Host USB devices through usb-host, by bus and address or by the helper's descriptor. */
  readonly usb: UsbCapability = this;
  /** virtserialports of ours, each a raw byte channel (qemu-channel.ts). */
  readonly channels: ChannelCapability = {
    // Under the adapter's lock too: a channel that hot-plugs a controller must not race a NIC or an xHCI for a root port.
    openChannel: (spec, opts = {}) => this.serialized(async () => (await openChannel(this.qmp, spec, { ...opts, ...(this.opts.rootPorts ? { rootPorts: this.opts.rootPorts } : {}) })).socket),
    closeChannel: (id, opts = {}) => this.serialized(async () => void (await closeChannel(this.qmp, id, opts))),
  };
  private readonly ourShares = new Map<string, Tracked>();
  private readonly ourNics = new Map<string, TrackedNic>();
  private readonly ourUsb = new Map<string, TrackedUsb>();
  /** What this QEMU has for USB, asked on the first attach; a failed ask is asked again. */
  private usbSupportAsked: Promise<UsbSupport> | undefined;
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
   * Every device of these QOM types the VM has, named (ours when the id
   * carries `prefix`) or anonymous (started with it), with the root port (or
   * bus) it sits on, sorted by device id.
   */
  private async devicesOfType(types: string | readonly string[], prefix: string): Promise<QomDevice[]> {
    const wanted = new Set([types].flat().map((t) => `child<${t}>`));
    const found = [];
    for (const base of [PERIPHERAL, PERIPHERAL_ANON]) {
      for (const child of await this.qomList(base)) {
        if (!wanted.has(child.type)) continue;
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
    return freeRootPorts(this.qmp, this.opts.rootPorts);
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
    return this.listDevices('net', 'virtio-net-pci', NIC_PREFIX);
  }

  private async listDevices(kind: DeviceKind, type: string, prefix: string): Promise<DeviceInfo[]> {
    return (await this.devicesOfType(type, prefix)).map((d) => ({ kind, id: d.id, deviceId: d.deviceId, location: d.location }));
  }

  private async doAttachNet(spec: NetSpec, netdev: Record<string, unknown>, opts: AttachOptions): Promise<DeviceHandle> {
    const deviceId = nicDeviceId(spec.id);
    const netdevId = nicNetdevId(spec.id);
    if (this.ourNics.has(spec.id) || (await this.hasDevice(deviceId))) {
      throw new VmmError(`NIC ${spec.id}: device ${deviceId} is already in the VM; detach it first`);
    }
    const port = (await this.freeRootPorts())[0];
    if (!port) throw new VmmError(`NIC ${spec.id}: no free pcie-root-port; start the VM with one '-device pcie-root-port,id=…' per device plugged at the same time`);
    const call = callOptions(opts);
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
    // Only once the device is gone is its netdev free; deleting it closes the backend's socket.
    await this.unplug('net', id, this.ourNics, nic, opts, () => this.removeNetdev(nic.netdevId));
  }

  /**
   * Unplug one of our devices: `beforeDetach`, device_del, then wait for the
   * DEVICE_DELETED that names the device itself (a virtio proxy's backend
   * child is reported first, with no `device`), so that what it held is
   * free for `release`; then forget it and say so, as an expected detach.
   * Until then its event is not "unexpected".
   */
  private async unplug<T extends { deviceId: string }>(kind: DeviceKind, id: string, tracked: Map<string, T>, device: T, opts: DetachOptions, release?: () => Promise<void>): Promise<void> {
    await opts.beforeDetach?.();
    const { deviceId } = device;
    const timeoutMs = opts.timeoutMs ?? 10_000;
    this.detaching.add(deviceId);
    try {
      const deleted = this.qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data.device === deviceId, { timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) });
      deleted.catch(() => undefined);
      if (!(await this.requestUnplug(deviceId))) {
        await deleted.catch((cause: unknown) => {
          // PCI devices go when the guest lets go (ACPI); QEMU unplugs a USB device by itself.
          const why = kind === 'usb' ? 'QEMU removes a USB device without the guest, so QEMU itself is stuck' : 'ACPI hot-unplug needs a running guest that releases the device';
          throw new VmmError(`${KIND_WORDS[kind]} ${id}: QEMU did not report ${deviceId} deleted within ${timeoutMs} ms; ${why}`, { cause });
        });
      }
      await release?.();
    } finally {
      this.detaching.delete(deviceId);
    }
    tracked.delete(id);
    this.log.info({ kind, id, deviceId }, `${KIND_WORDS[kind]} detached`);
    this.emit({ type: 'device-detached', kind, id, deviceId, expected: true });
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
    if (!(await this.hasDevice(deviceId))) return undefined;
    const path = `${PERIPHERAL}/${deviceId}`;
    return { deviceId, netdevId: await this.qomGetString(path, 'netdev'), port: portOfBus(await this.qomGetString(path, 'parent_bus')) };
  }

  async attachUsb(spec: UsbSpec, opts: AttachOptions = {}): Promise<DeviceHandle> {
    checkUsbSpec(spec);
    return this.serialized(() => this.doAttachUsb(spec, opts));
  }

  async detachUsb(id: string, opts: DetachOptions = {}): Promise<void> {
    assertSafeId('USB device', id);
    return this.serialized(async () => {
      const deviceId = usbDeviceId(id);
      // One left by an earlier daemon run is ours too, by its name.
      const usb = this.ourUsb.get(id) ?? ((await this.hasDevice(deviceId)) ? { deviceId } : undefined);
      if (!usb) throw new VmmError(`USB device ${id} is not attached to this VM`);
      await this.unplug('usb', id, this.ourUsb, usb, opts);
    });
  }

  /** Every usb-host device the VM has: ours (by our naming) and those it was started with, with their controller. */
  async listUsb(): Promise<DeviceInfo[]> {
    return this.listDevices('usb', USB_HOST_DRIVER, USB_PREFIX);
  }

  private async doAttachUsb(spec: UsbSpec, opts: AttachOptions): Promise<DeviceHandle> {
    const deviceId = usbDeviceId(spec.id);
    if (this.ourUsb.has(spec.id) || (await this.hasDevice(deviceId))) {
      throw new VmmError(`USB device ${spec.id}: device ${deviceId} is already in the VM; detach it first`);
    }
    const support = await this.usbSupport();
    const refusal = usbRefusal(support);
    if (refusal) throw new VmmError(`USB device ${spec.id}: ${refusal}`);
    const call = callOptions(opts);
    const controller = await this.ensureXhci(spec.id, support, call);
    let fdset: number | undefined;
    if (spec.fd !== undefined) {
      try {
        fdset = (await this.qmp.execute('add-fd', { opaque: deviceId }, { ...call, fds: [spec.fd], result: AddedFd }))['fdset-id'];
      } catch (cause) {
        throw new VmmError(`USB device ${spec.id}: QEMU did not take the descriptor of ${usbName(spec)} (add-fd): ${describe(cause)}`, { cause });
      }
    }
    try {
      await this.qmp.execute('device_add', usbHostArgs(spec, controller.bus, fdset), call);
    } catch (cause) {
      throw new VmmError(usbAttachFailure(spec, controller.location, describe(cause)), { cause });
    } finally {
      // usb-host holds its own dup of the descriptor once realized; the fdset's copy is needed no longer, either way.
      if (fdset !== undefined) await this.qmp.execute('remove-fd', { 'fdset-id': fdset }).catch((err: unknown) => this.log.warn({ err, fdset }, 'remove-fd after usb-host device_add failed'));
    }
    this.ourUsb.set(spec.id, { deviceId });
    this.log.info({ usb: spec.id, deviceId, device: usbName(spec), controller: controller.location, byDescriptor: fdset !== undefined }, 'USB device attached');
    return { kind: 'usb', id: spec.id, deviceId, location: controller.location };
  }

  /** What this QEMU has for USB passthrough, asked once. */
  private usbSupport(): Promise<UsbSupport> {
    const types = async (parent: string) => (await this.qmp.execute('qom-list-types', { implements: parent, abstract: false }, { result: QomTypes })).map((t) => t.name);
    this.usbSupportAsked ??= Promise.all([types(USB_HOST_DRIVER), types(PCI_XHCI_TYPE)]).then(
      ([host, xhci]) => ({ usbHost: host.includes(USB_HOST_DRIVER), xhciTypes: xhci }),
      (cause: unknown) => {
        this.usbSupportAsked = undefined;
        throw new VmmError(`cannot ask QEMU which USB devices it has (qom-list-types): ${describe(cause)}`, { cause });
      },
    );
    return this.usbSupportAsked;
  }

  /**
   * The xHCI controller to plug into: one the VM has (started with it, named
   * or not, or ours from before), found in QOM by type; otherwise ours,
   * hot-plugged on a free root port like a NIC. It stays when its devices
   * go: taking it out needs the guest's ACPI help and gains nothing.
   */
  private async ensureXhci(id: string, support: UsbSupport, call: ReturnType<typeof callOptions>): Promise<XhciController> {
    const present = await this.findXhci(support);
    if (present) return present;
    const refusal = xhciRefusal(support);
    if (refusal) throw new VmmError(`USB device ${id}: ${refusal}`);
    const port = (await this.freeRootPorts())[0];
    if (!port) throw new VmmError(`USB device ${id}: the VM has no xHCI controller and no free pcie-root-port to hot-plug one on; start it with '-device qemu-xhci' or one more '-device pcie-root-port,id=…'`);
    try {
      await this.qmp.execute('device_add', xhciArgs(port), call);
    } catch (cause) {
      throw new VmmError(`USB device ${id}: hot-plugging the xHCI controller ${XHCI_ID} on ${port} failed: ${describe(cause)}`, { cause });
    }
    this.log.info({ deviceId: XHCI_ID, port }, 'xHCI controller hot-plugged');
    const plugged = await this.findXhci(support);
    if (!plugged) throw new VmmError(`USB device ${id}: QEMU took ${XHCI_ID} on ${port}, but QOM shows no USB bus on it`);
    return plugged;
  }

  private async findXhci(support: UsbSupport): Promise<XhciController | undefined> {
    for (const d of await this.devicesOfType(support.xhciTypes, XHCI_ID)) {
      const bus = (await this.qomList(d.path)).find((c) => c.type === 'child<usb-bus>');
      if (bus) return { bus: bus.name, location: portOfBus(`${d.path}/${bus.name}`) ?? bus.name };
    }
    return undefined;
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
    if (await this.hasDevice(deviceId)) {
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
    const call = callOptions(opts);
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
    await this.unplug('share', id, this.ourShares, share, opts, () =>
      this.qmp.execute('chardev-remove', { id: share.chardevId }).then(
        () => undefined,
        (cause: unknown) => {
          if (cause instanceof QmpError && /not found/i.test(cause.errorDesc ?? '')) return;
          throw new VmmError(`share ${id}: chardev-remove ${share.chardevId} failed: ${describe(cause)}`, { cause });
        },
      ),
    );
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
    if (!(await this.hasDevice(deviceId))) return undefined;
    const chardevId = await this.qomGetString(path, 'chardev');
    const tag = await this.qomGetString(path, 'tag');
    const port = portOfBus(await this.qomGetString(path, 'parent_bus'));
    return { spec: { id, tag, socketPath: '' }, deviceId, chardevId, port };
  }

  private onQmpEvent(event: QmpEvent): void {
    if (event.event !== 'DEVICE_DELETED' || typeof event.data.device !== 'string') return;
    const deviceId = event.data.device;
    if (this.detaching.has(deviceId)) return;
    this.forgetUnexpected('net', this.ourNics, deviceId, (nic) => this.removeNetdev(nic.netdevId));
    this.forgetUnexpected('share', this.ourShares, deviceId, (share) => this.qmp.execute('chardev-remove', { id: share.chardevId }));
    // A usb-host goes by itself when its controller does (e.g. the guest ejected ours), or by someone else's device_del.
    this.forgetUnexpected('usb', this.ourUsb, deviceId);
  }

  /** A device of ours the VM lost without our asking: free its backend, and tell listeners it went. */
  private forgetUnexpected<T extends { deviceId: string }>(kind: DeviceKind, tracked: Map<string, T>, deviceId: string, release?: (device: T) => Promise<unknown>): void {
    for (const [id, device] of tracked) {
      if (device.deviceId !== deviceId) continue;
      tracked.delete(id);
      this.log.warn({ kind, id, deviceId }, `${KIND_WORDS[kind]} removed without our asking`);
      release?.(device).catch((err: unknown) => this.log.warn({ err, kind, id }, `freeing the backend of ${deviceId} after its unexpected unplug failed`));
      this.emit({ type: 'device-detached', kind, id, deviceId, expected: false });
    }
  }

  /** Whether the VM has a device with this id. */
  private async hasDevice(deviceId: string): Promise<boolean> {
    return (await this.qomList(PERIPHERAL)).some((c) => c.name === deviceId);
  }

  private qomList(path: string): Promise<QomProperty[]> {
    return qomList(this.qmp, path);
  }

  private qomGetString(path: string, property: string): Promise<string> {
    return qomGetString(this.qmp, path, property);
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


