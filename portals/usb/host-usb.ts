import { createHash } from 'node:crypto';
import { closeSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import type { VmConfig } from '../../src/config/schema.js';
import { audit, type AuditDecision, type AuditReason } from '../../src/host/audit.js';
import type { ConsentAsker, ConsentResult } from '../../src/host/consent.js';
import type { VmDevices } from '../../src/host/vm-devices.js';
import type { Logger } from '../../src/log.js';
import { describeRow } from '../../src/policy/model.js';
import type { PolicyDecider } from '../../src/policy/policy.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import { listUsbDevices, mountedFilesystemsOf, mountRefusal, offerOf, permissionKey, showableText, type BlockDevice, type Offer, type UsbChange, type UsbHostDevice } from '../../src/usb/devices.js';
import type { VmmEvent } from '../../src/vmm/adapter.js';
import type { MethodDescriptor, Params, ResultOf } from '../../src/protocol/methods.js';
import type { GuestPeer } from '../portal.js';
import { UsbDeviceId } from './key.js';
import { relayBoth } from '../../src/usb/stream-pair.js';
import { BusCallError } from '../../src/dbus/bus.js';
import { helperWords } from '../../src/helper/client.js';
import { USBIP_HOST, usbSpeedOf } from '../../src/usb/usbip.js';
import { openUsbipEnd, usbipEndProblem, VsockPorts, type UsbipEnd } from './usbip-ends.js';
import { UsbipDevices, UsbipExport, UsbipImport, UsbipUnexport, UsbipUnimport, type ProvidedDevice } from './usbip-schema.js';
import { acquireQuestion, deviceInWords } from './question.js';
import type { UsbEntry, UsbEvent, UsbId, UsbState } from './schema.js';

/**
 * The host's USB devices and which VM holds each: one daemon-wide table,
 * because a device goes to at most one VM at a time. The guest's Acquire
 * (with consent), the host's CLI and bus API (without: the user on the host
 * asked), a VM's start and a device's replug (an "Always" row) all come
 * here.
 *
 * Rules, whoever asks:
 * - hubs and built-in (non-removable) devices are never offered;
 * - a storage device with filesystems mounted on the host is refused, with
 *   the mounts named: we do not unmount on the user's behalf, since a
 *   filesystem in use cannot be unmounted safely from here;
 * - keyboards and mice are offered with a warning that the host loses them;
 * - a device another VM holds is refused, and the guest is not told which
 *   VM holds it (the host's CLI is);
 * - rows match by vendor, product and ID_SERIAL (the permission key), never
 *   by where the device is plugged in.
 *
 * A host device gets into the VM through the VM's device layer (`usb`:
 * QEMU's usb-host, libvirt's hostdev). A device plugged into a provider VM
 * (Qubes' sys-usb, `usb.provider` in its config) goes by USB/IP: the host
 * has a stream into each of the two VMs (a channel QEMU hot-plugs, or a
 * vsock connection to the VM's root agent: usbip-ends.ts), the provider's
 * root agent exports the device on its stream, the other VM's imports it
 * from its own, and the daemon relays the bytes between the two. A device is
 * named by its bus number and address while it is plugged in (`b1d5`, or
 * `sys-usb.b1d5` for one in a VM), which is also our id for it in the VMM,
 * so a restarted daemon finds what it had attached.
 */
const PORTAL = 'Usb';
const MAX_LISTED = 128;

/** What the daemon knows of one VM for USB: set by its session. */
export interface UsbVmLink {
  vm: VmConfig;
  devices: VmDevices | undefined;
  /** Tell the VM's guest; false when no guest is connected. */
  notify: (event: UsbEvent, device: UsbEntry) => boolean;
  /** The VM's guest while one is connected: a provider's lists and exports, an importer's imports. */
  guest: () => GuestPeer | undefined;
}

/**
 * The privileged helper's part: open the device node for a VMM that takes a
 * descriptor; for a VM that gets a host device by USB/IP, bind it to
 * usbip-host, have the host kernel export it on a stream (a descriptor of
 * the stream's other end), and give it back.
 */
export interface UsbHelper {
  usbOpen(busid: string): Promise<number>;
  usbBind(busid: string): Promise<void>;
  /** The daemon's end of the stream usbip-host has the other end of. */
  usbExport(busid: string): Promise<Duplex>;
  usbUnbind(busid: string): Promise<void>;
  close(): void;
}

export interface UsbWatcher {
  close(): void;
}

export interface HostUsbDeps {
  policy: PolicyDecider;
  consent: ConsentAsker;
  nextRequestId: () => string;
  log: Logger;
  /** The host's devices now; default: read from /sys. */
  readDevices?: () => UsbHostDevice[];
  /** The block devices on a device, with their mounts; default: read from /sys and mountinfo. */
  mounted?: (dev: UsbHostDevice) => BlockDevice[];
  /** Connect to the privileged helper; absent where there is none. */
  helper?: () => Promise<UsbHelper>;
  /** Why the helper cannot be asked now (src/helper/client.ts helperProblem), or undefined; asked before the user is. */
  helperProblem?: () => Promise<string | undefined>;
  /** The daemon's own 0700 runtime directory, where the VMMs listen for USB/IP channels. */
  runtimeDir?: string;
}

/** A device as HostUsb knows it: a host device, or (`source`) one plugged into a provider VM. */
export type Dev = UsbHostDevice & { source?: string };

/** What goes on while a device is in a VM by USB/IP. */
interface UsbipRoute {
  /** The provider VM the device is plugged into; undefined for the host's own, which the host kernel exports. */
  provider: string | undefined;
  /** The host's end in the provider and in the importer (usbip-ends.ts). */
  ends: UsbipEnd[];
  vhciPort: number;
  streams: Duplex[];
}

/** Who asked: the guest (consent), the host's CLI or bus API, or a row (VM start, replug). */
export type Via = 'guest' | 'cli' | 'always';

interface Held {
  vm: string;
  key: string;
  busid: string;
  usbip?: UsbipRoute;
}

/**
 * The exporting side of a USB/IP route: exports the device and gives the
 * devid and speed the importer needs, and the daemon's stream from it,
 * recording its channels in `route` and its undoing in `undo`.
 */
type Exporter = (route: UsbipRoute, undo: (() => Promise<unknown>)[]) => Promise<{ devid: number; speed: number; stream: Promise<Duplex> }>;

const noDevice = (id: UsbId) => `no USB device ${id} ${id.includes('.') ? `in VM "${id.slice(0, id.indexOf('.'))}"` : 'on the host'} now (unplugged, or replugged with a new id: list the devices again)`;

/** A device's part of its channels' names: where it is plugged in now. */
const usbTag = (dev: Pick<Dev, 'busnum' | 'devnum'>) => `b${dev.busnum}d${dev.devnum}`;

const PROVIDER_ASK_MS = 10_000;
/** A provider's list this recent is used as it is. */
const PROVIDER_FRESH_MS = 1000;
const USBIP_STEP_MS = 30_000;

/** What `xdp-vm usb list` shows on the host: every device, offered or not, and who holds it. */
export interface HostUsbRow {
  device: Dev;
  id: UsbId;
  key: string;
  offer: Offer;
  holder: string | undefined;
}

export function usbIdOf(dev: Pick<Dev, 'busnum' | 'devnum' | 'source'>): UsbId {
  return `${dev.source ? `${dev.source}.` : ''}b${dev.busnum}d${dev.devnum}`;
}

/**
 * A provider VM's word for one of its devices, as HostUsb holds it: every
 * string made showable again and capped, and its key checked as the policy
 * checks one; a device whose key is not one is left out.
 */
export function providedDevice(vm: string, p: ProvidedDevice): Dev | undefined {
  const text = (t: string | undefined) => (t === undefined ? undefined : showableText(t) || undefined);
  const key = UsbDeviceId.safeParse(`usb:${p.vendorId}/${p.productId}/${p.idSerial}`);
  if (!key.success) return undefined;
  return {
    source: vm,
    busid: p.busid,
    busnum: p.busnum,
    devnum: p.devnum,
    major: 189,
    minor: (p.busnum - 1) * 128 + (p.devnum - 1),
    vendorId: p.vendorId,
    productId: p.productId,
    bcdDevice: p.bcdDevice,
    manufacturer: text(p.manufacturer),
    product: text(p.product),
    serial: text(p.serial),
    deviceClass: p.deviceClass,
    configuration: p.configuration,
    interfaces: p.interfaces.map((i) => ({ name: showableText(i.name, 64), number: i.number, class: i.class, subclass: i.subclass, protocol: i.protocol, driver: i.driver === undefined ? undefined : showableText(i.driver, 64) })),
    speed: p.speed,
    removable: p.removable,
    driver: undefined,
    idSerial: p.idSerial,
    idSerialFrom: 'udev',
  };
}

export class HostUsb {
  private readonly links = new Map<string, { link: UsbVmLink; off: () => void }>();
  private readonly held = new Map<UsbId, Held>();
  /** The devices as last read, by id: what an unplug's event no longer has in sysfs. */
  private known = new Map<UsbId, Dev>();
  /** Each provider VM's devices, as it last said, and when it was last asked. */
  private readonly provided = new Map<string, Dev[]>();
  private readonly asked = new Map<string, { at: number; pending: boolean; done: Promise<void> }>();
  private readonly locks = new Map<UsbId, Promise<unknown>>();
  private readonly vsockPorts = new VsockPorts();
  private readonly log: Logger;

  constructor(private readonly deps: HostUsbDeps) {
    this.log = deps.log.child({ portal: PORTAL });
  }

  /** A VM's session hands over its device layer and its guest; returns the function that forgets it. */
  register(link: UsbVmLink): () => void {
    const d = link.devices;
    const name = link.vm.name;
    const offs: (() => void)[] = [];
    if (d) {
      const up = () => void this.onVmmUp(name);
      const gone = () => this.onVmmGone(name);
      const detached = (e: Extract<VmmEvent, { type: 'device-detached' }>) => this.onDetached(name, e);
      d.on('up', up);
      d.on('gone', gone);
      d.on('device-detached', detached);
      offs.push(() => d.off('up', up), () => d.off('gone', gone), () => d.off('device-detached', detached));
    }
    const off = () => {
      for (const o of offs) o();
      this.links.delete(name);
    };
    this.links.set(name, { link, off });
    return off;
  }

  close(): void {
    for (const { off } of [...this.links.values()]) off();
  }

  /**
   * The daemon is stopping, and the USB/IP streams it relays end with it:
   * each device they carry leaves its VM now, in order (the VM's import
   * undone while its guest is still there), and goes back to its owner, a
   * host device to the host's own driver. What a VMM holds (usb-host,
   * hostdev) stays in the VM, and the next daemon adopts it.
   */
  async stopUsbip(): Promise<void> {
    for (const [id, h] of [...this.held]) {
      if (!h.usbip) continue;
      await this.serialized(id, async () => {
        if (this.held.get(id) !== h) return;
        this.held.delete(id);
        await this.detachUsbip(h.vm, id, h);
        this.record(h.vm, this.deps.nextRequestId(), 'revoke', 'closed', { device: id, key: h.key, busid: h.busid, detached: true, why: 'the host daemon stopped' });
      }).catch((err: Error) => this.log.warn({ vm: h.vm, device: id, err: err.message }, 'could not take a USB/IP device down as the daemon stopped'));
    }
  }

  /** The devices as the host has them now, and as each provider VM last said, remembered for the unplug events that follow. */
  private read(): Dev[] {
    let devices: Dev[];
    try {
      devices = (this.deps.readDevices ?? (() => listUsbDevices()))();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'could not read the host\'s USB devices');
      devices = [];
    }
    for (const list of this.provided.values()) devices = devices.concat(list);
    this.known = new Map(devices.map((d) => [usbIdOf(d), d]));
    return devices;
  }

  /**
   * Ask each provider VM whose guest is connected for its devices; one that
   * does not answer keeps what it said last. Asked at most once a second per
   * provider, and one ask at a time, however many VMs list at once: a VM
   * listing in a loop cannot make the daemon hammer the provider's guest.
   */
  async refreshProviders(): Promise<void> {
    await Promise.all(
      [...this.links.values()]
        .filter(({ link }) => link.vm.usb?.provider)
        .map(({ link }) => {
          const name = link.vm.name;
          const guest = link.guest();
          if (!guest) {
            this.provided.delete(name);
            return undefined;
          }
          const last = this.asked.get(name);
          if (last && (last.pending || Date.now() - last.at < PROVIDER_FRESH_MS)) return last.done;
          const done = guest
            .request(UsbipDevices, {}, { signal: AbortSignal.timeout(PROVIDER_ASK_MS) })
            .then(
              (r) => {
                const before = this.provided.get(name);
                const now = r.devices.flatMap((p) => providedDevice(name, p) ?? []);
                this.provided.set(name, now);
                if (before) void this.providerChanged(before, now);
              },
              (err: Error) => this.log.warn({ provider: name, err: err.message }, 'the provider VM did not list its USB devices'),
            )
            .finally(() => this.asked.set(name, { at: Date.now(), pending: false, done: Promise.resolve() }));
          this.asked.set(name, { at: Date.now(), pending: true, done });
          return done;
        }),
    );
  }

  /**
   * What a provider's new list says came and went since its last, told as
   * the host's own plugging is: unplugged devices leave the VM that had them,
   * new ones go where an "Always" row wants them. Only between two lists of
   * the same guest: a provider that (re)connects is its start, not a plug.
   */
  private async providerChanged(before: readonly Dev[], now: readonly Dev[]): Promise<void> {
    const ids = (list: readonly Dev[]) => new Set(list.map((d) => usbIdOf(d)));
    const had = ids(before);
    const has = ids(now);
    try {
      for (const dev of before) if (!has.has(usbIdOf(dev))) await this.unplugged(dev);
      for (const dev of now) {
        if (had.has(usbIdOf(dev))) continue;
        const offer = offerOf(dev);
        if (!offer.offered) continue;
        for (const { link } of this.links.values()) {
          if (link.vm.name === dev.source) continue;
          if ((await this.deps.policy.decision(PORTAL, permissionKey(dev), link.vm)).verdict !== 'deny') link.notify('plugged', this.entryOf(dev, link.vm.name, offer));
        }
        await this.attachWanted(dev);
      }
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'could not follow a provider VM\'s USB devices');
    }
  }

  /**
   * Ask the provider VMs for their devices every `intervalMs`, so a device
   * plugged into or out of one is noticed (and an "Always" row follows it)
   * without anyone listing. Returns the function that stops it.
   */
  pollProviders(intervalMs = 2000): () => void {
    const timer = setInterval(() => {
      if ([...this.links.values()].some(({ link }) => link.vm.usb?.provider && link.guest())) void this.refreshProviders();
    }, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  /** Every host device, offered or not, with the VM holding it: for the host's user. */
  async hostList(): Promise<HostUsbRow[]> {
    await this.refreshProviders();
    return this.read().map((device) => this.rowOf(device));
  }

  private rowOf(device: Dev): HostUsbRow {
    return { device, id: usbIdOf(device), key: permissionKey(device), offer: offerOf(device), holder: this.held.get(usbIdOf(device))?.vm };
  }

  /** The devices `vm` may ask for: offered, and no row denies it. */
  async list(vm: string): Promise<UsbEntry[]> {
    const link = this.link(vm);
    await this.refreshProviders();
    const out: UsbEntry[] = [];
    for (const dev of this.read()) {
      if (out.length >= MAX_LISTED) break;
      if (dev.source === vm) continue;
      const offer = offerOf(dev);
      if (!offer.offered) continue;
      if ((await this.deps.policy.decision(PORTAL, permissionKey(dev), link.vm)).verdict === 'deny') continue;
      out.push(this.entryOf(dev, vm, offer));
    }
    return out;
  }

  /**
   * The host device the host's user means: its id (b1d5), its port (1-2.3),
   * its permission key, or VID:PID when only one device has them.
   */
  async resolve(name: string): Promise<HostUsbRow> {
    await this.refreshProviders();
    const devices = this.read();
    const n = name.trim();
    const exact = devices.filter((d) => usbIdOf(d) === n || d.busid === n || permissionKey(d) === n);
    if (exact.length === 1) return this.rowOf(exact[0]!);
    const ids = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$/.exec(n);
    const byIds = ids ? devices.filter((d) => d.vendorId === ids[1]!.toLowerCase() && d.productId === ids[2]!.toLowerCase()) : [];
    if (byIds.length === 1) return this.rowOf(byIds[0]!);
    if (byIds.length > 1) throw new ProtocolError('invalid-params', `${byIds.length} devices are ${n} (${byIds.map((d) => usbIdOf(d)).join(', ')}): name one by its id`);
    throw new ProtocolError('invalid-params', `no USB device "${n.slice(0, 60)}" on this host; xdp-vm usb list shows them (${devices.length ? devices.map((d) => usbIdOf(d)).join(', ') : 'none now'})`);
  }

  /**
   * Attach device `id` to `vm`: from the guest, only if a row or the user
   * allows it; from the CLI, the user on the host asked. Resolves once the
   * VMM has it on the VM's USB bus.
   */
  async acquire(vm: string, id: UsbId, via: 'guest' | 'cli', signal?: AbortSignal): Promise<{ id: UsbId; key: string }> {
    const link = this.link(vm);
    const request = this.deps.nextRequestId();
    // A provider VM's device: what that VM has now, asked now.
    if (id.includes('.')) await this.refreshProviders();
    const dev = this.device(id, vm, request, via);
    const key = permissionKey(dev);
    const facts = { device: id, key, name: deviceInWords(dev), busid: dev.busid, via };
    if (this.held.get(id)?.vm === vm) return { id, key };
    if (via === 'guest' && (await this.deps.policy.decision(PORTAL, key, link.vm)).verdict === 'deny') {
      // Not listed to this VM, and not there as far as it can tell: the answer a device that is not there gets.
      this.record(vm, request, 'deny', 'policy', { ...facts, attached: false, why: 'a row denies this VM the device, so it was told there is none' });
      throw new ProtocolError('invalid-params', noDevice(id));
    }
    const offer = offerOf(dev);
    // Asking the user is pointless when it cannot be done: say why first.
    this.usable(link, dev, offer, request, facts);
    if (dev.source === undefined && !link.devices?.vmm?.usb) {
      // A host device by USB/IP takes the helper: whether it is there is known before anyone is asked.
      const missing = await this.deps.helperProblem?.();
      if (missing) {
        const why = `${deviceInWords(dev)} can reach VM "${vm}" only by USB/IP from this computer, and ${missing}`;
        this.record(vm, request, 'error', 'failure', { ...facts, attached: false, why });
        throw new ProtocolError('failed', why);
      }
    }
    let consent: ConsentResult = { allowed: true, reason: 'cli' };
    if (via === 'guest') {
      const q = acquireQuestion(link.vm.label, dev, offer.offered ? offer.warning : undefined);
      consent = await this.deps.consent({ vm: link.vm, portal: PORTAL, arg: key, requestId: request, summary: q.summary, details: q.details }, signal);
      if (!consent.allowed) {
        // requestConsent wrote the decision's audit line.
        throw new ProtocolError('denied', refusal(deviceInWords(dev), consent));
      }
    }
    await this.serialized(id, () => this.attach(link, dev, request, { via, reason: consent.reason }));
    return { id, key };
  }

  /** Give the device back to the host. `vm` undefined (the host's CLI): whichever VM holds it. False when that VM did not hold it. */
  async release(vm: string | undefined, id: UsbId, via: 'guest' | 'cli'): Promise<boolean> {
    return this.serialized(id, async () => {
      const h = this.held.get(id);
      if (!h || (vm !== undefined && h.vm !== vm)) return false;
      const request = this.deps.nextRequestId();
      const link = this.links.get(h.vm)?.link;
      const dev = this.known.get(id);
      const facts = { device: id, key: h.key, busid: h.busid, via };
      try {
        if (h.usbip) await this.detachUsbip(h.vm, id, h);
        else await link?.devices?.require('usb').detachUsb(id);
      } catch (err) {
        this.record(h.vm, request, 'error', 'failure', { ...facts, detached: false, why: (err as Error).message });
        throw new ProtocolError('failed', `could not detach ${dev ? deviceInWords(dev) : id} from VM "${h.vm}": ${(err as Error).message}`);
      }
      this.held.delete(id);
      this.record(h.vm, request, 'revoke', via === 'cli' ? 'cli' : 'user', { ...facts, detached: true });
      this.log.info({ vm: h.vm, ...facts }, 'USB device detached');
      if (dev && link) link.notify('detached', this.entryOf(dev, h.vm));
      return true;
    });
  }

  /**
   * Host devices left bound to usbip-host, as a daemon that stopped leaves
   * the ones it had exported by USB/IP (their streams ended with it, so the
   * VMs lost them), go back to the host's own drivers through the helper,
   * which unbinds only what it bound for this user. Run before the VMs
   * connect, so an "Always" row then attaches them afresh.
   */
  async reclaimExported(): Promise<void> {
    if (!this.deps.helper) return;
    for (const dev of this.read()) {
      if (dev.source !== undefined || dev.driver !== USBIP_HOST || this.held.has(usbIdOf(dev))) continue;
      const facts = { device: usbIdOf(dev), key: permissionKey(dev), busid: dev.busid };
      try {
        await this.withHelper((h) => h.usbUnbind(dev.busid));
        this.log.info(facts, 'gave a device left bound to usbip-host back to the host (a daemon before this one had exported it)');
      } catch (err) {
        this.log.info({ ...facts, why: (err as Error).message }, 'left a device bound to usbip-host as it is');
      }
    }
  }

  /** The VM whose guest just connected gets what its "Always" rows name. */
  async guestConnected(vm: string): Promise<void> {
    const link = this.links.get(vm)?.link;
    if (!link?.devices?.vmm) return;
    // A provider's new guest is asked afresh: what it said before it (re)started is stale.
    if (link.vm.usb?.provider) this.asked.delete(vm);
    await this.attachAlways(vm);
    if (!link.vm.usb?.provider) return;
    // A provider VM came up: each of its devices goes where an "Always" row wants it.
    for (const dev of this.provided.get(vm) ?? []) if (!this.held.has(usbIdOf(dev)) && offerOf(dev).offered) await this.attachWanted(dev);
  }

  /** The kernel said a device came or went (src/usb/devices.ts watchUsbDevices). */
  async onHostChange(change: UsbChange): Promise<void> {
    const before = [...this.known.values()].filter((d) => d.source === undefined && d.busid === change.busid);
    const now = this.read().filter((d) => d.source === undefined && d.busid === change.busid);
    for (const dev of before) {
      if (now.some((d) => usbIdOf(d) === usbIdOf(dev))) continue;
      await this.unplugged(dev);
    }
    if (change.action !== 'add') return;
    for (const dev of now) {
      // An add is reported twice (at add and at bind), and only one of them has the interfaces: tell the guests once it is offerable.
      const offer = offerOf(dev);
      if (!offer.offered || before.some((d) => usbIdOf(d) === usbIdOf(dev))) continue;
      for (const { link } of this.links.values()) {
        if ((await this.deps.policy.decision(PORTAL, permissionKey(dev), link.vm)).verdict !== 'deny') link.notify('plugged', this.entryOf(dev, link.vm.name, offer));
      }
      await this.attachWanted(dev);
    }
  }

  /** A device is gone from the host: whoever held it has it no more, and the VMM's device for it goes too. */
  private async unplugged(dev: Dev): Promise<void> {
    const id = usbIdOf(dev);
    await this.serialized(id, async () => {
      const h = this.held.get(id);
      if (h) {
        this.held.delete(id);
        const link = this.links.get(h.vm)?.link;
        // QEMU keeps a usb-host whose device went, waiting for it: take it out, as a replug gets a new address.
        // A USB/IP route's channels and import go the same way.
        if (h.usbip) await this.detachUsbip(h.vm, id, h);
        else await link?.devices?.vmm?.usb?.detachUsb(id).catch((err: Error) => this.log.warn({ vm: h.vm, device: id, err: err.message }, 'could not remove the VMM\'s device for an unplugged USB device'));
        this.record(h.vm, this.deps.nextRequestId(), 'revoke', 'failure', { device: id, key: h.key, busid: h.busid, detached: true, why: dev.source ? `the device was unplugged from VM "${dev.source}"` : 'the device was unplugged from the host' });
        if (link) link.notify('detached', this.entryOf(dev, h.vm));
      }
      for (const { link } of this.links.values()) {
        if (link.vm.name === dev.source) continue;
        if ((await this.deps.policy.decision(PORTAL, permissionKey(dev), link.vm)).verdict !== 'deny') link.notify('unplugged', this.entryOf(dev, link.vm.name));
      }
    });
  }

  /** A device just plugged in goes to the VM whose allow row names it, if that VM is up. */
  private async attachWanted(dev: Dev): Promise<void> {
    for (const { link } of this.links.values()) {
      if (!link.devices?.vmm || link.vm.name === dev.source) continue;
      if (await this.alwaysRow(link.vm, dev)) {
        await this.tryAlways(link, dev);
        return;
      }
    }
  }

  private async attachAlways(vm: string): Promise<void> {
    const link = this.links.get(vm)?.link;
    if (!link) return;
    await this.refreshProviders();
    for (const dev of this.read()) {
      if (this.held.has(usbIdOf(dev)) || !offerOf(dev).offered || dev.source === vm) continue;
      if (await this.alwaysRow(link.vm, dev)) await this.tryAlways(link, dev);
    }
  }

  /** The allow row that names this device for this VM; a VM-wide row attaches nothing by itself. */
  private async alwaysRow(vm: VmConfig, dev: Dev): Promise<string | undefined> {
    const d = await this.deps.policy.decision(PORTAL, permissionKey(dev), vm);
    return d.verdict === 'allow' && d.row?.arg === permissionKey(dev) ? describeRow(d.row) : undefined;
  }

  /** An "Always" attach: every refusal is audited and logged by the way, and none is an error for anyone. */
  private async tryAlways(link: UsbVmLink, dev: Dev): Promise<void> {
    const id = usbIdOf(dev);
    const request = this.deps.nextRequestId();
    const rule = await this.alwaysRow(link.vm, dev);
    try {
      this.usable(link, dev, offerOf(dev), request, { device: id, key: permissionKey(dev), busid: dev.busid, via: 'always' });
      await this.serialized(id, () => this.attach(link, dev, request, { via: 'always', reason: 'policy', ...(rule ? { rule } : {}) }));
    } catch (err) {
      this.log.info({ vm: link.vm.name, device: id, why: (err as Error).message }, 'an "Always" row names this device, and it could not be attached');
    }
  }

  /** Throws, with an audit line, when `dev` cannot go to this VM now. */
  private usable(link: UsbVmLink, dev: Dev, offer: Offer, request: string, facts: Record<string, unknown>): void {
    const id = usbIdOf(dev);
    let why: string | undefined;
    const holder = this.held.get(id)?.vm;
    if (!offer.offered) why = offer.why;
    else if (holder !== undefined && holder !== link.vm.name) {
      why = facts.via === 'guest' ? `${deviceInWords(dev)} is in use by another VM; it can be had once that VM lets it go` : `${deviceInWords(dev)} is attached to VM "${holder}"; detach it there first (xdp-vm usb detach ${id})`;
    } else if (offer.massStorage) why = mountRefusal(dev, this.mountsOf(dev));
    if (!why && dev.source === link.vm.name) why = `${deviceInWords(dev)} is plugged into VM "${link.vm.name}" itself`;
    if (!why) why = dev.source !== undefined ? this.usbipProblem(link, dev.source) : this.hostRouteProblem(link);
    if (!why) return;
    this.record(link.vm.name, request, 'error', 'failure', { ...facts, attached: false, why });
    throw new ProtocolError(holder !== undefined && holder !== link.vm.name ? 'denied' : 'failed', why);
  }

  /**
   * Why a host device cannot go to `link`'s VM now, or undefined: through
   * its VMM's `usb` (QEMU, libvirt), else by USB/IP from the host kernel,
   * through the privileged helper, where the VM's link can carry it.
   */
  private hostRouteProblem(link: UsbVmLink): string | undefined {
    let vmm: string;
    if (!link.devices) vmm = `VM "${link.vm.name}" has no VMM socket in its config ("vmm"), and USB devices are attached through it`;
    else {
      try {
        link.devices.require('usb');
        return undefined;
      } catch (err) {
        vmm = (err as Error).message;
      }
    }
    if (!link.devices?.vmm) return vmm;
    if (!this.deps.helper) return `${vmm}; nor by USB/IP from this computer, which takes the privileged helper, and this daemon has none`;
    const end = usbipEndProblem(link, 'the VM that asks');
    return end ? `${vmm}; nor by USB/IP: ${end}` : undefined;
  }

  /** Why a provider VM's device cannot go to `link`'s VM by USB/IP now, or undefined. */
  private usbipProblem(link: UsbVmLink, provider: string): string | undefined {
    const p = this.links.get(provider)?.link;
    if (!p) return `VM "${provider}" is not configured any more`;
    return usbipEndProblem(p, 'the VM the device is plugged into') ?? usbipEndProblem(link, 'the VM that asks');
  }

  private mountsOf(dev: Dev): BlockDevice[] {
    // A provider VM's device is mounted, if at all, in that VM: usbip-host takes it from its driver there.
    if (dev.source !== undefined) return [];
    try {
      return (this.deps.mounted ?? ((d) => mountedFilesystemsOf(d)))(dev);
    } catch (err) {
      this.log.warn({ device: usbIdOf(dev), err: (err as Error).message }, 'could not tell whether the device has filesystems mounted');
      return [];
    }
  }

  /** Hand the device to the VMM. Run under the device's lock. */
  private async attach(link: UsbVmLink, dev: Dev, request: string, how: { via: Via; reason: AuditReason; rule?: string }): Promise<void> {
    const id = usbIdOf(dev);
    const key = permissionKey(dev);
    const facts = { device: id, key, name: deviceInWords(dev), busid: dev.busid, via: how.via };
    const h = this.held.get(id);
    if (h?.vm === link.vm.name) return;
    if (h) throw new ProtocolError('denied', `${deviceInWords(dev)} was attached to another VM meanwhile`);
    if (dev.source !== undefined) return this.attachUsbip(link, dev, request, how, this.providerExport(link, dev));
    const vmm = link.devices?.vmm;
    if (vmm && !vmm.usb) return this.attachUsbip(link, dev, request, how, this.hostExport(dev));
    let fd: number | undefined;
    let helperSaid: string | undefined;
    try {
      const cap = link.devices!.require('usb');
      // QEMU takes the node as a descriptor the helper opened, so it needs no access to /dev/bus/usb; libvirtd opens it itself.
      if (vmm?.kind === 'qemu' && this.deps.helper) ({ fd, helperSaid } = await this.openThroughHelper(dev.busid));
      await cap.attachUsb({ id, vendorId: parseInt(dev.vendorId, 16), productId: parseInt(dev.productId, 16), hostBus: dev.busnum, hostAddress: dev.devnum, ...(fd !== undefined ? { fd } : {}) });
    } catch (err) {
      const why = (err as Error).message + (helperSaid ? ` (the privileged helper would not open it either: ${helperSaid})` : '');
      this.record(link.vm.name, request, 'error', 'failure', { ...facts, attached: false, why });
      this.log.error({ vm: link.vm.name, ...facts, err: why }, 'could not attach the USB device');
      throw new ProtocolError('failed', `could not attach ${deviceInWords(dev)}: ${why}`);
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
    this.held.set(id, { vm: link.vm.name, key, busid: dev.busid });
    this.record(link.vm.name, request, 'allow', how.reason, { ...facts, attached: true, by: fd !== undefined ? 'descriptor' : 'address' }, how.rule);
    this.log.info({ vm: link.vm.name, ...facts }, 'USB device attached');
    link.notify('attached', this.entryOf(dev, link.vm.name));
  }

  /**
   * A device to `link`'s VM by USB/IP: the exporting side (a provider VM's
   * root agent, or the host kernel through the helper) gives the daemon a
   * stream, the VM's root agent imports the device from a stream into the
   * VM (usbip-ends.ts), and the daemon relays between the two. The relay
   * starts once both are there (a channel's at once, a vsock connection
   * once its agent listens). Anything done is undone when a later step fails.
   */
  private async attachUsbip(link: UsbVmLink, dev: Dev, request: string, how: { via: Via; reason: AuditReason; rule?: string }, exporter: Exporter): Promise<void> {
    const id = usbIdOf(dev);
    const key = permissionKey(dev);
    const facts = { device: id, key, name: deviceInWords(dev), busid: dev.busid, from: dev.source ?? 'this computer', via: how.via };
    const route: UsbipRoute = { provider: dev.source, ends: [], vhciPort: -1, streams: [] };
    const undo: (() => Promise<unknown>)[] = [];
    let fromExporter: Promise<Duplex> | undefined;
    try {
      const exported = await exporter(route, undo);
      fromExporter = exported.stream;
      const other = dev.source ?? 'host';
      const channel = `usb-${other}-${usbTag(dev)}`;
      const i = await openUsbipEnd(link, { id: channel, name: `io.github.xdp_vm.usbip.${other}.${usbTag(dev)}`, socketPath: this.channelSocket(link.vm.name, channel) }, this.vsockPorts);
      route.ends.push(i);
      const importing = this.ask(link, UsbipImport, { ...i.channel, devid: exported.devid, speed: exported.speed });
      undo.push(() => importing.then(({ vhciPort }) => this.ask(link, UsbipUnimport, { vhciPort }), () => undefined));
      const toImporter = i.connect(importing);
      const streams = Promise.all([exported.stream, toImporter]).then(([a, b]) => {
        route.streams = [a, b];
        relayBoth(a, b, ['the exporting side', "the VM's stream"], (why) => this.log.info({ vm: link.vm.name, device: id, why }, 'USB/IP relay ended'));
      });
      const [imported] = await Promise.all([importing, streams]);
      route.vhciPort = imported.vhciPort;
    } catch (err) {
      for (const u of undo.reverse()) await u().catch((e: Error) => this.log.warn({ ...facts, err: e.message }, 'could not undo a step of a USB/IP attach'));
      for (const s of route.streams) s.destroy();
      // The exporting side's stream, when the importing side failed before the relay had it.
      await fromExporter?.then((s) => s.destroy(), () => undefined);
      for (const e of route.ends.reverse()) await e.close().catch((e: Error) => this.log.warn({ ...facts, err: e.message }, 'could not take down a USB/IP channel'));
      const why = (err as Error).message;
      this.record(link.vm.name, request, 'error', 'failure', { ...facts, attached: false, why });
      this.log.error({ vm: link.vm.name, ...facts, err: why }, 'could not attach the USB device');
      throw new ProtocolError('failed', `could not attach ${deviceInWords(dev)}: ${why}`);
    }
    this.held.set(id, { vm: link.vm.name, key, busid: dev.busid, usbip: route });
    this.record(link.vm.name, request, 'allow', how.reason, { ...facts, attached: true, by: 'usbip', vhciPort: route.vhciPort }, how.rule);
    this.log.info({ vm: link.vm.name, ...facts, vhciPort: route.vhciPort }, 'USB device attached');
    link.notify('attached', this.entryOf(dev, link.vm.name));
  }

  /** The provider VM's root agent exports the device on a stream from it (its channel, or its vsock). */
  private providerExport(link: UsbVmLink, dev: Dev): Exporter {
    return async (route, undo) => {
      const provider = this.links.get(dev.source!)!.link;
      const channel = `usb-${link.vm.name}-${usbTag(dev)}`;
      const p = await openUsbipEnd(provider, { id: channel, name: `io.github.xdp_vm.usbip.${link.vm.name}.${usbTag(dev)}`, socketPath: this.channelSocket(provider.vm.name, channel) }, this.vsockPorts);
      route.ends.push(p);
      const exporting = this.ask(provider, UsbipExport, { busid: dev.busid, ...p.channel });
      // Undone once it is known to have been done, even when the stream beside it failed first.
      undo.push(() => exporting.then(() => this.ask(provider, UsbipUnexport, { busid: dev.busid }), () => undefined));
      const stream = p.connect(exporting);
      const [exported] = await Promise.all([exporting, stream]);
      return { ...exported, stream };
    };
  }

  /**
   * The host kernel exports the device, through the privileged helper: bound
   * to usbip-host (the host's own driver lets it go), then handed one end of
   * a stream whose other end the helper gives the daemon.
   */
  private hostExport(dev: Dev): Exporter {
    return async (_route, undo) => {
      const speed = usbSpeedOf(dev.speed);
      if (speed === undefined) throw new Error(`its speed (${JSON.stringify(dev.speed ?? 'unknown')}) is none vhci-hcd can attach`);
      await this.withHelper(async (h) => {
        await h.usbBind(dev.busid);
        undo.push(() => this.withHelper((h2) => h2.usbUnbind(dev.busid)));
      });
      const stream = await this.withHelper((h) => h.usbExport(dev.busid));
      return { devid: ((dev.busnum << 16) | dev.devnum) >>> 0, speed, stream: Promise.resolve(stream) };
    };
  }

  private async withHelper<T>(op: (h: UsbHelper) => Promise<T>): Promise<T> {
    let helper: UsbHelper;
    try {
      helper = await this.deps.helper!();
    } catch (err) {
      throw new Error(`the privileged helper cannot be reached on the system bus: ${(err as Error).message}`);
    }
    try {
      return await op(helper);
    } catch (err) {
      throw new Error(err instanceof BusCallError ? helperWords(err) : `the privileged helper: ${(err as Error).message}`);
    } finally {
      helper.close();
    }
  }

  /** Undo a USB/IP attach, each step whatever the others do; the first failure is thrown after all were tried. */
  private async detachUsbip(vm: string, id: UsbId, h: Held): Promise<void> {
    const r = h.usbip!;
    const importer = this.links.get(vm)?.link;
    const provider = r.provider !== undefined ? this.links.get(r.provider)?.link : undefined;
    const failures: string[] = [];
    const step = async (what: string, op: (() => Promise<unknown>) | undefined) => {
      if (!op) return;
      await op().catch((err: Error) => failures.push(`${what}: ${err.message}`));
    };
    await step('the VM would not let it go', importer?.guest() && r.vhciPort >= 0 ? () => this.ask(importer, UsbipUnimport, { vhciPort: r.vhciPort }) : undefined);
    if (r.provider === undefined) await step('the host would not take it back', () => this.withHelper((helper) => helper.usbUnbind(h.busid)));
    else await step(`VM "${r.provider}" would not take it back`, provider?.guest() ? () => this.ask(provider, UsbipUnexport, { busid: h.busid }) : undefined);
    for (const s of r.streams) s.destroy();
    const toImporter = r.ends.at(-1);
    const fromProvider = r.provider === undefined ? undefined : r.ends[0];
    await step('its channel stayed in the VM', importer && toImporter ? () => toImporter.close() : undefined);
    await step(`its channel stayed in VM "${r.provider}"`, provider && fromProvider ? () => fromProvider.close() : undefined);
    if (failures.length) this.log.warn({ vm, device: id, failures }, 'a USB/IP detach was not clean');
  }

  private channelSocket(vm: string, channel: string): string {
    const dir = this.deps.runtimeDir;
    if (!dir) throw new Error('this daemon has no runtime directory for USB/IP channels');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    return path.join(dir, `ch-${createHash('sha256').update(`${vm}\0${channel}`).digest('hex').slice(0, 16)}.sock`);
  }

  /** A request to a VM's guest, with a deadline; its refusal is its own words. */
  private async ask<M extends MethodDescriptor>(link: UsbVmLink, method: M, params: Params<M>): Promise<ResultOf<M>> {
    const guest = link.guest();
    if (!guest) throw new Error(`VM "${link.vm.name}" has no guest side connected`);
    return guest.request(method, params, { signal: AbortSignal.timeout(USBIP_STEP_MS) });
  }

  /** The device node from the helper, or why not (then the VMM opens it itself, if it may). */
  private async openThroughHelper(busid: string): Promise<{ fd?: number; helperSaid?: string }> {
    let helper: UsbHelper | undefined;
    try {
      helper = await this.deps.helper!();
      return { fd: await helper.usbOpen(busid) };
    } catch (err) {
      return { helperSaid: (err as Error).message };
    } finally {
      helper?.close();
    }
  }

  private async onVmmUp(vm: string): Promise<void> {
    const link = this.links.get(vm)?.link;
    const cap = link?.devices?.vmm?.usb;
    if (!link || !cap) return;
    try {
      // A restarted daemon: the devices the VM already has by our naming are its own still.
      const present = new Map(this.read().map((d) => [usbIdOf(d), d]));
      for (const info of await cap.listUsb()) {
        const dev = info.id ? present.get(info.id as UsbId) : undefined;
        if (!dev || this.held.has(info.id as UsbId)) continue;
        this.held.set(info.id as UsbId, { vm, key: permissionKey(dev), busid: dev.busid });
        this.log.info({ vm, device: info.id, key: permissionKey(dev) }, 'adopted the USB device the VM already has');
      }
      await this.attachAlways(vm);
    } catch (err) {
      this.log.error({ vm, err: (err as Error).message }, 'could not bring the VM\'s USB devices back');
    }
  }

  /** The VM stopped: its devices are the host's again. */
  /**
   * The VM stopped: its devices are the host's again, and what a USB/IP
   * route left in the other VM (its channel, the export or the import) is
   * taken down. A provider that stopped takes its devices with it.
   */
  private onVmmGone(vm: string): void {
    this.provided.delete(vm);
    this.asked.delete(vm);
    for (const [id, h] of [...this.held]) {
      const providerGone = h.usbip?.provider === vm;
      if (h.vm !== vm && !providerGone) continue;
      this.held.delete(id);
      this.record(h.vm, this.deps.nextRequestId(), 'revoke', 'failure', { device: id, key: h.key, busid: h.busid, detached: true, why: providerGone ? `VM "${vm}", which the device is plugged into, stopped` : 'the VM stopped' });
      if (h.usbip) void this.serialized(id, () => this.detachUsbip(h.vm, id, h));
      const dev = this.known.get(id);
      if (providerGone && dev) this.links.get(h.vm)?.link.notify('detached', this.entryOf(dev, h.vm));
    }
  }

  private onDetached(vm: string, e: Extract<VmmEvent, { type: 'device-detached' }>): void {
    if (e.kind !== 'usb' || e.expected) return;
    const h = this.held.get(e.id as UsbId);
    if (!h || h.vm !== vm) return;
    this.held.delete(e.id as UsbId);
    this.record(vm, this.deps.nextRequestId(), 'revoke', 'failure', { device: e.id, key: h.key, busid: h.busid, detached: true, why: 'the VMM removed the device without our asking' });
    const dev = this.known.get(e.id as UsbId);
    const link = this.links.get(vm)?.link;
    if (dev && link) link.notify('detached', this.entryOf(dev, vm));
  }

  private link(vm: string): UsbVmLink {
    const l = this.links.get(vm)?.link;
    if (!l) throw new ProtocolError('invalid-params', `no VM named "${vm.slice(0, 60)}"; configured: ${[...this.links.keys()].join(', ') || 'none'}`);
    return l;
  }

  /** The device by id, as the host has it now; whether `vm` may have it is asked after. */
  private device(id: UsbId, vm: string, request: string, via: Via): Dev {
    const dev = this.read().find((d) => usbIdOf(d) === id);
    if (dev) return dev;
    const why = noDevice(id);
    this.record(vm, request, 'error', 'failure', { device: id, via, why });
    throw new ProtocolError('invalid-params', why);
  }

  private entryOf(dev: Dev, vm: string, offer: Offer = offerOf(dev)): UsbEntry {
    const holder = this.held.get(usbIdOf(dev))?.vm;
    const state: UsbState = holder === undefined ? 'free' : holder === vm ? 'here' : 'elsewhere';
    return {
      id: usbIdOf(dev),
      key: permissionKey(dev),
      vendorId: dev.vendorId,
      productId: dev.productId,
      vendor: dev.manufacturer ?? '',
      product: dev.product ?? '',
      serial: dev.serial ?? '',
      deviceClass: dev.deviceClass,
      interfaceClasses: [...new Set(dev.interfaces.map((i) => i.class))].slice(0, 32),
      state,
      warning: offer.offered ? (offer.warning ?? '') : offer.why,
    };
  }

  private record(vm: string, request: string, decision: AuditDecision, reason: AuditReason, asked: Record<string, unknown>, rule?: string): void {
    audit({ vm, portal: PORTAL, request, decision, reason, grant: null, asked, ...(rule ? { rule } : {}) });
  }

  /** One change at a time per device: two VMs asking for it, an unplug and a replug must not race. */
  private serialized<T>(id: UsbId, op: () => Promise<T>): Promise<T> {
    const before = this.locks.get(id) ?? Promise.resolve();
    const run = before.then(op, op);
    const tail = run.catch(() => undefined);
    this.locks.set(id, tail);
    void tail.then(() => {
      if (this.locks.get(id) === tail) this.locks.delete(id);
    });
    return run;
  }
}

function refusal(name: string, consent: ConsentResult): string {
  if (consent.reason === 'policy') return `a policy row refuses this VM ${name} (xdp-vm permissions on the host)`;
  if (consent.reason === 'timeout') return `nobody answered the host's question in time; ${name} was not attached`;
  return `the user did not allow this VM to use ${name}`;
}
