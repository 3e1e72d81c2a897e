import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { requireProgram } from '../deps.js';
import { ExecError, runProgram, startService, type Service } from '../exec.js';
import { childLogger, type Logger } from '../log.js';
import {
  assertSafeId,
  VmmError,
  type AttachedShare,
  type AttachOptions,
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
import { AdapterBase, checkShareSpec, checkUsbSpec } from './adapter-base.js';
import {
  ALIAS_PREFIX,
  domainFilesystems,
  domainHasUsbBus,
  domainInterfaces,
  domainUsbHostdevs,
  filesystemXml,
  hasAlias,
  hostdevXml,
  interfaceXml,
  NIC_ALIAS_PREFIX,
  parseEventLine,
  USB_ALIAS_PREFIX,
  type DomainEvent,
} from './libvirt-xml.js';

/**
 * The libvirt adapter: virtiofs shares, NICs (on a tap) and host USB devices
 * plugged into a running domain with `virsh attach-device --live`, naming each
 * device by a user alias (`ua-…`) so it can be found and removed again.
 * libvirt picks the free PCI slot or USB port itself; the domain needs spare
 * pcie-root-port controllers, shared memory, and a USB controller. virsh is
 * the one client: it keeps us off libvirt's C API and works for any URI.
 */

export interface LibvirtAdapterOptions {
  domain: string;
  uri: string;
  /** The VM's name, for logs. */
  name?: string;
  logger?: Logger;
  /** The virsh program; default from the dependency table. */
  virsh?: string;
  /** Safety-net `domstate` poll in case the event stream missed the domain stopping; default 5 s. */
  pollMs?: number;
}

/** States in which the domain's QEMU process exists. */
const ALIVE_STATES = new Set(['running', 'idle', 'paused', 'in shutdown', 'pmsuspended', 'blocked']);

/**
 * One kind of device we plug under our alias, `prefix` + our id: what
 * messages call it, how to find those the domain has in its XML, and the ids
 * of those this instance attached (or adopted by detaching them).
 */
interface PluggedKind {
  kind: DeviceKind;
  noun: string;
  prefix: string;
  /** What to do about a device of ours the domain already has; a share may be in use by the guest. */
  ifPresent: string;
  find: (domainXml: string) => readonly { alias?: string | undefined; location?: string | undefined }[];
  ours: Set<string>;
}

/** Our id in a device's alias, when the alias is one of ours for `kind`. */
function idIn(kind: PluggedKind, alias: string | undefined): string | undefined {
  return alias?.startsWith(kind.prefix) ? alias.slice(kind.prefix.length) : undefined;
}

export class LibvirtAdapter extends AdapterBase implements VmmAdapter {
  readonly kind = 'libvirt' as const;
  /** Virtiofs shares. */
  readonly shares: ShareCapability = this;
  /** NICs on a tap libvirt opens by name; stream (passt) backends are refused, see interfaceXml. */
  readonly net: NetCapability = this;
  /** libvirt's own `<interface type='user'>` (QEMU's slirp), without forwards; see interfaceXml. */
  readonly userNetworking = { modes: ['own'], ownForwards: false } as const;
  /** Host USB devices as `<hostdev>`; see hostdevXml. */
  readonly usb: UsbCapability = this;
  private readonly plugged = {
    share: { kind: 'share', noun: 'share', prefix: ALIAS_PREFIX, ifPresent: 'detach it or leave it alone', find: domainFilesystems, ours: new Set<string>() },
    net: { kind: 'net', noun: 'NIC', prefix: NIC_ALIAS_PREFIX, ifPresent: 'detach it first', find: domainInterfaces, ours: new Set<string>() },
    usb: { kind: 'usb', noun: 'USB device', prefix: USB_ALIAS_PREFIX, ifPresent: 'detach it first', find: domainUsbHostdevs, ours: new Set<string>() },
  } satisfies Record<DeviceKind, PluggedKind>;
  private readonly detaching = new Set<string>();
  private readonly removedWaiters = new Map<string, () => void>();
  protected readonly log: Logger;
  private readonly virshPath: string;
  private monitor: Service | undefined;
  private poll: NodeJS.Timeout | undefined;
  private closed = false;

  /** Check the domain is running and start listening to its events. */
  static async connect(opts: LibvirtAdapterOptions): Promise<LibvirtAdapter> {
    const adapter = new LibvirtAdapter(opts);
    try {
      // The event stream first, so a stop right after the state check is still heard.
      adapter.startMonitor();
      const state = await adapter.domainState();
      if (!ALIVE_STATES.has(state)) throw new VmmError(`libvirt domain ${opts.domain} is not running (state: ${state})`);
    } catch (err) {
      await adapter.close();
      throw err;
    }
    return adapter;
  }

  private constructor(private readonly opts: LibvirtAdapterOptions) {
    super();
    this.log = opts.logger ?? childLogger({ component: 'vmm-libvirt', vm: opts.name });
    this.virshPath = opts.virsh ?? requireProgram('virsh');
  }

  async attachShare(spec: ShareSpec, opts: AttachOptions = {}): Promise<AttachedShare> {
    checkShareSpec(spec);
    const xml = filesystemXml(spec); // throws on what libvirt would refuse, before taking the lock
    return this.serialized(async () => {
      const { deviceId, location } = await this.attachPlugged(this.plugged.share, spec.id, `share ${spec.id}`, xml, opts);
      this.log.info({ share: spec.id, tag: spec.tag, alias: deviceId, location }, 'share attached');
      return { id: spec.id, tag: spec.tag, deviceId, location };
    });
  }

  async detachShare(id: string, opts: DetachOptions = {}): Promise<void> {
    return this.detachPlugged(this.plugged.share, id, opts);
  }

  async listShares(): Promise<ShareInfo[]> {
    return domainFilesystems(await this.dumpxml()).map((fs) => {
      const id = idIn(this.plugged.share, fs.alias);
      const attachedHere = id !== undefined && this.plugged.share.ours.has(id);
      return { id, tag: fs.tag, deviceId: fs.alias, location: fs.location, attachedHere };
    });
  }

  async attachNet(spec: NetSpec, opts: AttachOptions = {}): Promise<DeviceHandle> {
    const xml = interfaceXml(spec); // checks id, MAC, tap name and backend before taking the lock
    return this.serialized(async () => {
      const handle = await this.attachPlugged(this.plugged.net, spec.id, `NIC ${spec.id}`, xml, opts);
      const tap = spec.backend.type === 'tap' ? spec.backend.tapName : undefined;
      this.log.info({ nic: spec.id, alias: handle.deviceId, location: handle.location, tap, mac: spec.mac }, 'NIC attached');
      return handle;
    });
  }

  async detachNet(id: string, opts: DetachOptions = {}): Promise<void> {
    return this.detachPlugged(this.plugged.net, id, opts);
  }

  /** Every NIC the domain has, ours (by our alias) and those it was started with. */
  async listNet(): Promise<DeviceInfo[]> {
    return this.listPlugged(this.plugged.net);
  }

  /**
   * Pass a host USB device through. Refused before anything is sent when the
   * domain has no USB bus: libvirt 9.0 cannot hot-plug a USB controller
   * ("'usb' controller cannot be hot plugged"), so only a restart with one
   * helps, and libvirt's own refusal ("Domain has no USB bus support") says
   * nothing of that.
   */
  async attachUsb(spec: UsbSpec, opts: AttachOptions = {}): Promise<DeviceHandle> {
    checkUsbSpec(spec);
    const xml = hostdevXml(spec);
    const what = `USB device ${spec.id} (${usbIds(spec)} at host bus ${spec.hostBus} address ${spec.hostAddress})`;
    return this.serialized(async () => {
      const handle = await this.attachPlugged(this.plugged.usb, spec.id, what, xml, opts, (domainXml) =>
        domainHasUsbBus(domainXml)
          ? undefined
          : `domain ${this.opts.domain} has no USB controller (<controller type='usb' model='none'/>, or none at all), and libvirt cannot add one to a running domain; ` +
            "give it one, e.g. <controller type='usb' model='qemu-xhci'/>, and restart it",
      );
      this.log.info({ usb: spec.id, alias: handle.deviceId, location: handle.location, device: usbIds(spec), bus: spec.hostBus, address: spec.hostAddress }, 'USB device attached');
      return handle;
    });
  }

  async detachUsb(id: string, opts: DetachOptions = {}): Promise<void> {
    return this.detachPlugged(this.plugged.usb, id, opts);
  }

  /** Every host USB device the domain has, ours (by our alias) and those it was started with. */
  async listUsb(): Promise<DeviceInfo[]> {
    return this.listPlugged(this.plugged.usb);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.poll);
    await this.monitor?.stop(1000);
    this.dropListeners();
  }

  /**
   * Attach `deviceXml`, the device `id` of `kind`, under its alias: refused
   * when the domain has that alias already, or when `refuse` finds a reason in
   * the domain's XML; errors start with `what`. Runs under the lock.
   */
  private async attachPlugged(
    kind: PluggedKind,
    id: string,
    what: string,
    deviceXml: string,
    opts: AttachOptions,
    refuse?: (domainXml: string) => string | undefined,
  ): Promise<DeviceHandle> {
    const alias = `${kind.prefix}${id}`;
    const domainXml = await this.dumpxml();
    if (kind.ours.has(id) || kind.find(domainXml).some((d) => d.alias === alias)) {
      throw new VmmError(
        `${what}: device ${alias} is already in domain ${this.opts.domain} (started with it, or left by an earlier daemon); ${kind.ifPresent}`,
      );
    }
    const refusal = refuse?.(domainXml);
    if (refusal !== undefined) throw new VmmError(`${what}: ${refusal}`);
    await this.attachDevice(deviceXml, opts).catch((cause: unknown) => {
      throw new VmmError(`${what}: attach-device failed: ${virshReason(cause)}${attachHint(cause)}`, { cause });
    });
    const location = kind.find(await this.dumpxml()).find((d) => d.alias === alias)?.location;
    kind.ours.add(id);
    return { kind: kind.kind, id, deviceId: alias, location };
  }

  /** Unplug our device `id` of `kind` and wait until libvirt reports it gone; one that is not there is an error. */
  private async detachPlugged(kind: PluggedKind, id: string, opts: DetachOptions): Promise<void> {
    assertSafeId(kind.noun, id);
    return this.serialized(async () => {
      const alias = `${kind.prefix}${id}`;
      if (!kind.ours.has(id) && !kind.find(await this.dumpxml()).some((d) => d.alias === alias)) {
        throw new VmmError(`${kind.noun} ${id} is not attached to domain ${this.opts.domain}`);
      }
      await opts.beforeDetach?.();
      await this.detachAlias(`${kind.noun} ${id}`, alias, opts);
      kind.ours.delete(id);
      this.log.info({ [kind.kind]: id, alias }, `${kind.noun} detached`);
      this.emit({ type: 'device-detached', kind: kind.kind, id, deviceId: alias, expected: true });
    });
  }

  /** Every device of `kind` the domain has, with our id where the alias is ours. */
  private async listPlugged(kind: PluggedKind): Promise<DeviceInfo[]> {
    return kind.find(await this.dumpxml()).map((d) => ({ kind: kind.kind, id: idIn(kind, d.alias), deviceId: d.alias, location: d.location }));
  }

  /** `virsh attach-device --live` of one device's XML. */
  private async attachDevice(xml: string, opts: AttachOptions): Promise<void> {
    // virsh reads device XML only from a file, and /dev/stdin is no good: Node's stdio pipes are sockets.
    const dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-virsh-'));
    try {
      const file = path.join(dir, 'device.xml');
      writeFileSync(file, xml, { mode: 0o600 });
      await this.virsh(['attach-device', '--domain', this.opts.domain, '--file', file, '--live'], opts);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /** Ask libvirt to unplug `alias` and wait until it is gone; `what` names the device in errors. */
  private async detachAlias(what: string, alias: string, opts: DetachOptions): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    this.detaching.add(alias);
    try {
      const removed = this.waitRemoved(alias, timeoutMs, opts.signal);
      removed.catch(() => undefined);
      try {
        // Returns once QEMU has been asked; the guest's ACPI eject finishes later.
        await this.virsh(['detach-device-alias', '--domain', this.opts.domain, '--alias', alias, '--live'], opts);
      } catch (cause) {
        if (!/no device found with alias/i.test(virshReason(cause))) {
          throw new VmmError(`${what}: detach-device-alias ${alias} failed: ${virshReason(cause)}`, { cause });
        }
      }
      try {
        await removed;
      } catch (cause) {
        throw new VmmError(
          `${what}: ${alias} was still in domain ${this.opts.domain} after ${timeoutMs} ms; ` +
            "a PCI device's ACPI hot-unplug needs a running guest that releases it",
          { cause },
        );
      }
    } finally {
      this.detaching.delete(alias);
    }
  }

  /** Resolves when the event stream reports the alias removed, or dumpxml no longer lists it. */
  private waitRemoved(alias: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let done = false;
      const finish = (err?: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.removedWaiters.delete(alias);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve();
      };
      const onAbort = () => finish(new VmmError('detach was aborted'));
      signal?.addEventListener('abort', onAbort, { once: true });
      this.removedWaiters.set(alias, () => finish());
      const deadline = Date.now() + timeoutMs;
      const check = async () => {
        if (done) return;
        if (Date.now() > deadline) return finish(new VmmError(`timed out waiting for ${alias} to go`));
        try {
          if (!hasAlias(await this.dumpxml(), alias)) return finish();
        } catch (err) {
          return finish(err as Error);
        }
        timer = setTimeout(() => void check(), 200);
      };
      timer = setTimeout(() => void check(), 200);
    });
  }

  private startMonitor(): void {
    const args = ['-c', this.opts.uri, 'event', '--domain', this.opts.domain, '--loop', '--all'];
    const monitor = startService(`virsh-event-${this.opts.domain}`, this.virshPath, args, {
      env: virshEnv(),
      onStdoutLine: (line) => this.onEventLine(line),
    });
    this.monitor = monitor;
    void monitor.exited.then((exit) => {
      if (this.closed) return;
      const why = monitor.stderr.trim().split('\n').at(-1) ?? '';
      this.markGone(`the libvirt event stream ended (exit ${exit.code ?? exit.signal})${why ? `: ${why}` : ''}`);
    });
    this.poll = setInterval(() => void this.checkAlive(), this.opts.pollMs ?? 5000);
    this.poll.unref();
  }

  private onEventLine(line: string): void {
    let event: DomainEvent | undefined;
    try {
      event = parseEventLine(line);
    } catch (err) {
      this.log.warn({ err, line }, 'unreadable virsh event line');
    }
    if (!event) return;
    if (event.kind === 'lifecycle' && /^Stopped\b/.test(event.detail)) {
      this.markGone(`domain ${this.opts.domain} stopped (${event.detail})`);
    } else if (event.kind === 'device-removed') {
      this.onDeviceRemoved(event.detail);
    }
  }

  /** A device of ours that went without our asking (the guest ejected it, or someone else detached it) is an unexpected detach. */
  private onDeviceRemoved(alias: string): void {
    this.removedWaiters.get(alias)?.();
    if (this.detaching.has(alias)) return;
    for (const kind of Object.values(this.plugged)) {
      const id = idIn(kind, alias);
      if (id === undefined || !kind.ours.delete(id)) continue;
      this.log.warn({ [kind.kind]: id, alias }, `${kind.noun} removed without our asking`);
      this.emit({ type: 'device-detached', kind: kind.kind, id, deviceId: alias, expected: false });
    }
  }

  private async checkAlive(): Promise<void> {
    if (this.gone || this.closed) return;
    try {
      const state = await this.domainState();
      if (!ALIVE_STATES.has(state)) this.markGone(`domain ${this.opts.domain} is ${state}`);
    } catch (err) {
      // A busy libvirtd is not a stopped VM; only a domain libvirt no longer knows is.
      if (/domain not found|failed to get domain/i.test((err as Error).message)) this.markGone((err as Error).message);
      else this.log.debug({ err }, 'domstate check failed');
    }
  }

  private async domainState(): Promise<string> {
    try {
      const out = await this.virsh(['domstate', '--domain', this.opts.domain], { timeoutMs: 10_000 });
      return z.string().min(1).parse(out.trim().split('\n')[0]?.trim());
    } catch (cause) {
      throw new VmmError(`libvirt domain ${this.opts.domain} at ${this.opts.uri}: ${virshReason(cause)}`, { cause });
    }
  }

  private async dumpxml(): Promise<string> {
    try {
      return await this.virsh(['dumpxml', '--domain', this.opts.domain], { timeoutMs: 10_000 });
    } catch (cause) {
      throw new VmmError(`dumpxml of domain ${this.opts.domain} failed: ${virshReason(cause)}`, { cause });
    }
  }

  private async virsh(args: string[], opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<string> {
    const result = await runProgram(this.virshPath, ['-c', this.opts.uri, ...args], {
      env: virshEnv(),
      timeoutMs: opts.timeoutMs ?? 30_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    return result.stdout;
  }

  protected override whenGone(reason: string): void {
    clearInterval(this.poll);
    this.monitor?.kill();
    this.log.info({ reason }, 'libvirt domain gone');
  }

}

/**
 * virsh's environment: C messages (we match on them and domstate is translated
 * otherwise), and what a `qemu:///session` URI needs to find the user's daemon.
 */
function virshEnv(): Record<string, string | undefined> {
  const { HOME, XDG_RUNTIME_DIR, XDG_CONFIG_HOME, XDG_CACHE_HOME } = process.env;
  return { LC_ALL: 'C', HOME, XDG_RUNTIME_DIR, XDG_CONFIG_HOME, XDG_CACHE_HOME };
}

/** virsh's own "error: …" lines, without the generic "Failed to …" one when there is a better one. */
function virshReason(err: unknown): string {
  if (!(err instanceof ExecError)) return err instanceof Error ? err.message : String(err);
  const lines = err.stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('error: '))
    .map((l) => l.slice('error: '.length));
  const specific = lines.filter((l) => !/^Failed to /.test(l));
  return (specific.length ? specific : lines).join('; ') || err.message;
}

function attachHint(err: unknown): string {
  const reason = virshReason(err);
  if (/No more available PCI slots/i.test(reason)) {
    return "; give the domain one spare <controller type='pci' model='pcie-root-port'/> per device plugged at the same time";
  }
  if (/shared memory/i.test(reason)) return "; virtiofs needs <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>";
  // libvirtd looks the device up in sysfs itself, before QEMU is asked.
  if (/cannot open directory '\/sys\/bus\/usb\/devices'/.test(reason)) return '; libvirtd sees no USB bus on this host, so the device is not there';
  if (/Did not find USB device/i.test(reason)) return '; the device is not at that bus and address now: unplugged, or renumbered by a replug';
  return '';
}

/** `46f4:0001`, as lsusb names a device. */
function usbIds(spec: UsbSpec): string {
  return [spec.vendorId, spec.productId].map((n) => n.toString(16).padStart(4, '0')).join(':');
}
