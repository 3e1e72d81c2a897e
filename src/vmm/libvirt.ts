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
  type NetCapability,
  type NetSpec,
  type ShareInfo,
  type ShareCapability,
  type ShareSpec,
  type VmmAdapter,
} from './adapter.js';
import { AdapterBase, checkShareSpec } from './adapter-base.js';
import {
  ALIAS_PREFIX,
  domainFilesystems,
  domainInterfaces,
  filesystemXml,
  hasAlias,
  interfaceXml,
  NIC_ALIAS_PREFIX,
  nicAlias,
  parseEventLine,
  shareAlias,
  type DomainEvent,
  type DomainFilesystem,
  type DomainInterface,
} from './libvirt-xml.js';

/**
 * The libvirt adapter: virtiofs shares and NICs (on a tap) hot-plugged into a
 * running domain with `virsh attach-device --live`, naming each device by a
 * user alias (`ua-…`) so it can be found and removed again. libvirt picks the free PCI slot itself;
 * the domain needs spare pcie-root-port controllers and shared memory. virsh is
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
/** The virtio-fs config space holds the tag in 36 bytes. */

interface Tracked {
  id: string;
  tag: string;
  alias: string;
}

export class LibvirtAdapter extends AdapterBase implements VmmAdapter {
  readonly kind = 'libvirt' as const;
  /** Virtiofs shares. */
  readonly shares: ShareCapability = this;
  /** NICs on a tap libvirt opens by name; stream (passt) backends are refused, see interfaceXml. */
  readonly net: NetCapability = this;
  /** libvirt's own `<interface type='user'>` (QEMU's slirp), without forwards; see interfaceXml. */
  readonly userNetworking = { modes: ['own'], ownForwards: false } as const;
  private readonly ourShares = new Map<string, Tracked>();
  /** NIC id → alias, for the NICs this instance attached (or adopted by detaching). */
  private readonly ourNics = new Map<string, string>();
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
    filesystemXml(spec); // throws on what libvirt would refuse, before taking the lock
    return this.serialized(() => this.doAttachShare(spec, opts));
  }

  async detachShare(id: string, opts: DetachOptions = {}): Promise<void> {
    assertSafeId('share', id);
    return this.serialized(() => this.doDetachShare(id, opts));
  }

  async listShares(): Promise<ShareInfo[]> {
    return (await this.filesystems()).map((fs) => {
      const id = fs.alias?.startsWith(ALIAS_PREFIX) ? fs.alias.slice(ALIAS_PREFIX.length) : undefined;
      const attachedHere = id !== undefined && this.ourShares.get(id)?.alias === fs.alias;
      return { id, tag: fs.tag, deviceId: fs.alias, location: fs.location, attachedHere };
    });
  }

  async attachNet(spec: NetSpec, opts: AttachOptions = {}): Promise<DeviceHandle> {
    const xml = interfaceXml(spec); // checks id, MAC, tap name and backend before taking the lock
    return this.serialized(() => this.doAttachNet(spec, xml, opts));
  }

  async detachNet(id: string, opts: DetachOptions = {}): Promise<void> {
    assertSafeId('NIC', id);
    return this.serialized(() => this.doDetachNet(id, opts));
  }

  /** Every NIC the domain has, ours (by our alias) and those it was started with. */
  async listNet(): Promise<DeviceInfo[]> {
    return (await this.interfaces()).map((nic) => ({
      kind: 'net',
      id: nic.alias?.startsWith(NIC_ALIAS_PREFIX) ? nic.alias.slice(NIC_ALIAS_PREFIX.length) : undefined,
      deviceId: nic.alias,
      location: nic.location,
    }));
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.poll);
    await this.monitor?.stop(1000);
    this.dropListeners();
  }

  private async doAttachShare(spec: ShareSpec, opts: AttachOptions): Promise<AttachedShare> {
    if (this.ourShares.has(spec.id)) throw new VmmError(`share ${spec.id} is already attached`);
    const alias = shareAlias(spec.id);
    const present = await this.filesystems();
    if (present.some((fs) => fs.alias === alias)) {
      throw new VmmError(
        `share ${spec.id}: device ${alias} is already in domain ${this.opts.domain} (started with it, or left by an earlier daemon); ` +
          'detach it or leave it alone',
      );
    }
    await this.attachDevice(filesystemXml(spec), opts).catch((cause: unknown) => {
      throw new VmmError(`share ${spec.id}: attach-device failed: ${virshReason(cause)}${attachHint(cause)}`, { cause });
    });
    const location = (await this.filesystems()).find((fs) => fs.alias === alias)?.location;
    this.ourShares.set(spec.id, { id: spec.id, tag: spec.tag, alias });
    this.log.info({ share: spec.id, tag: spec.tag, alias, location }, 'share attached');
    return { id: spec.id, tag: spec.tag, deviceId: alias, location };
  }

  private async doAttachNet(spec: NetSpec, xml: string, opts: AttachOptions): Promise<DeviceHandle> {
    const alias = nicAlias(spec.id);
    if (this.ourNics.has(spec.id) || (await this.interfaces()).some((nic) => nic.alias === alias)) {
      throw new VmmError(
        `NIC ${spec.id}: device ${alias} is already in domain ${this.opts.domain} (started with it, or left by an earlier daemon); ` +
          'detach it first',
      );
    }
    await this.attachDevice(xml, opts).catch((cause: unknown) => {
      throw new VmmError(`NIC ${spec.id}: attach-device failed: ${virshReason(cause)}${attachHint(cause)}`, { cause });
    });
    const location = (await this.interfaces()).find((nic) => nic.alias === alias)?.location;
    this.ourNics.set(spec.id, alias);
    const tap = spec.backend.type === 'tap' ? spec.backend.tapName : undefined;
    this.log.info({ nic: spec.id, alias, location, tap, mac: spec.mac }, 'NIC attached');
    return { kind: 'net', id: spec.id, deviceId: alias, location };
  }

  private async doDetachNet(id: string, opts: DetachOptions): Promise<void> {
    const alias = nicAlias(id);
    if (!this.ourNics.has(id) && !(await this.interfaces()).some((nic) => nic.alias === alias)) {
      throw new VmmError(`NIC ${id} is not attached to domain ${this.opts.domain}`);
    }
    await opts.beforeDetach?.();
    await this.detachAlias(`NIC ${id}`, alias, opts);
    this.ourNics.delete(id);
    this.log.info({ nic: id, alias }, 'NIC detached');
    this.emit({ type: 'device-detached', kind: 'net', id, deviceId: alias, expected: true });
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
            'ACPI hot-unplug needs a running guest that releases the device',
          { cause },
        );
      }
    } finally {
      this.detaching.delete(alias);
    }
  }

  private async doDetachShare(id: string, opts: DetachOptions): Promise<void> {
    const alias = shareAlias(id);
    if (!this.ourShares.has(id) && !(await this.filesystems()).some((fs) => fs.alias === alias)) {
      throw new VmmError(`share ${id} is not attached to domain ${this.opts.domain}`);
    }
    await opts.beforeDetach?.();
    await this.detachAlias(`share ${id}`, alias, opts);
    this.ourShares.delete(id);
    this.log.info({ share: id, alias }, 'share detached');
    this.emit({ type: 'device-detached', kind: 'share', id, deviceId: alias, expected: true });
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

  private onDeviceRemoved(alias: string): void {
    this.removedWaiters.get(alias)?.();
    if (this.detaching.has(alias)) return;
    for (const [id, share] of this.ourShares) {
      if (share.alias !== alias) continue;
      this.ourShares.delete(id);
      this.log.warn({ share: id, alias }, 'share removed without our asking');
      this.emit({ type: 'device-detached', kind: 'share', id, deviceId: alias, expected: false });
    }
    for (const [id, tracked] of this.ourNics) {
      if (tracked !== alias) continue;
      this.ourNics.delete(id);
      this.log.warn({ nic: id, alias }, 'NIC removed without our asking');
      this.emit({ type: 'device-detached', kind: 'net', id, deviceId: alias, expected: false });
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

  private async filesystems(): Promise<DomainFilesystem[]> {
    return domainFilesystems(await this.dumpxml());
  }

  private async interfaces(): Promise<DomainInterface[]> {
    return domainInterfaces(await this.dumpxml());
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
  return '';
}
