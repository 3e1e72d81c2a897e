import type { Duplex } from 'node:stream';
import { ALL_METHODS } from '../../portals/index.js';
import { hostHandlersFor, type HostHalves, type HostPortalDeps } from '../../portals/host.js';
import type { GuestPeer } from '../../portals/portal.js';
import type { VmConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import { Connection, type AnyHandler } from '../protocol/connection.js';
import { methodTable, type NotificationHandler } from '../protocol/methods.js';
import { FolderMount, FolderUnmount, Ping, PortalsChanged, ShareMount, ShareUnmount } from '../protocol/session.js';
import type { VmFolders } from './folders/vm-folders.js';
import { folderTag, type FolderShare } from './folders/spec.js';
import type { VmShare } from './vm-share.js';
import { VmDevices } from './vm-devices.js';
import { audit } from './audit.js';
import { describeRow } from '../policy/model.js';
import { vmmConnector } from './vmm-connector.js';
import { hop } from '../trace.js';
import { guestLogText } from '../guest-input.js';
import { peerLogLimiter, type LimitedLevel } from '../protocol/log-limiter.js';
import { VmNetworks } from '../../portals/network/vm-networks.js';
import { NetworkChanged } from '../../portals/network/schema.js';
import { HelperClient } from '../helper/client.js';
import type { HostUsb } from '../../portals/usb/host-usb.js';
import { UsbChanged } from '../../portals/usb/schema.js';

/**
 * Everything the host holds for one VM: its current link (identified by the
 * endpoint it arrived on) and its share. A new link replaces the old one, so a
 * guest cannot pile up connections.
 */
const METHODS = methodTable(ALL_METHODS);

/** What the daemon gives every VM; the session adds the VM itself and its share. */
export type VmSessionDeps = Omit<HostPortalDeps, 'vm' | 'ensureShare' | 'notify' | 'networks' | 'usb'> & {
  /** The daemon's USB devices, shared by every VM; without it the VM is served none. */
  usb?: HostUsb;
  halves: HostHalves;
  /** Where each network's passt keeps its socket and pid file, and its logs; without it the VM joins no network. */
  networkDirs?: { runtime: string; logs: string };
  /** Whether the privileged helper can be asked (one daemon-wide, cached probe: cachedHelperProblem). */
  helperProblem?: () => Promise<string | undefined>;
};

export class VmSession {
  private conn: Connection | undefined;
  private readonly handlers: ReadonlyMap<string, AnyHandler>;
  private readonly notificationHandlers: ReadonlyMap<string, NotificationHandler>;
  /** The portals this VM is served: those with a host half that no VM-wide deny row shuts. Sent in each welcome. */
  private served: string[];
  private readonly halves: HostHalves;
  private readonly policy: VmSessionDeps['policy'];
  /** Whether each portal is served, as last decided (and audited when it shut or opened). */
  private readonly decided = new Map<string, boolean>();
  share: VmShare | undefined;
  /** The VM's folder shares; undefined while the daemon serves none (no shares, as in tests without a VMM). */
  folders: VmFolders | undefined;
  /** The VM's one VMM connection; undefined when its config names no VMM. */
  readonly devices: VmDevices | undefined;
  /** The VM's networks; undefined where the daemon serves none (no directories given). */
  readonly networks: VmNetworks | undefined;
  private mountConfirmed: { conn: Connection; generation: number } | undefined;
  private readonly usb: HostUsb | undefined;
  private readonly forgetUsb: () => void;
  readonly log: Logger;

  constructor(
    readonly vm: VmConfig,
    deps: VmSessionDeps,
  ) {
    this.log = deps.log.child({ vm: vm.name });
    const connector = vmmConnector(vm, this.log);
    this.devices = connector ? new VmDevices(connector, this.log.child({ component: 'vmm' })) : undefined;
    const { halves, networkDirs, usb, helperProblem, ...portalDeps } = deps;
    const notify: HostPortalDeps['notify'] = (note, params) => (this.connected && this.conn ? this.conn.notify(note, params) : false);
    this.networks = networkDirs
      ? new VmNetworks({ vm, devices: this.devices, policy: deps.policy, consent: deps.consent, nextRequestId: deps.nextRequestId, notify: (change) => notify(NetworkChanged, change), dirs: networkDirs, helper: () => HelperClient.connect(), ...(helperProblem ? { helperProblem } : {}), log: this.log })
      : undefined;
    this.usb = usb;
    this.forgetUsb = usb ? usb.register({ vm, devices: this.devices, notify: (event, device) => notify(UsbChanged, { event, device }), guest: () => this.guest }) : () => undefined;
    const handlers = hostHandlersFor(halves, {
      ...portalDeps,
      vm,
      log: this.log,
      ensureShare: () => this.ensureShare(),
      notify,
      ...(this.networks ? { networks: this.networks } : {}),
      ...(usb ? { usb } : {}),
    });
    this.handlers = new Map<string, AnyHandler>([[Ping.name, async (params) => ({ seq: (params as { seq: number }).seq })], ...handlers.methods]);
    this.notificationHandlers = new Map(handlers.notifications);
    this.halves = halves;
    this.policy = deps.policy;
    this.served = [...halves.keys()];
    void this.refreshServed();
    deps.policy.onChanged?.(() => void this.refreshServed());
  }

  /** The portals this VM is served now. */
  get portals(): readonly string[] {
    return this.served;
  }

  /**
   * Work out again which portals this VM is served, and tell a connected
   * guest when that changed, so it exports only those interfaces. A portal
   * whose VM-wide row says deny is not served (its requests would all be
   * refused); one denied only for some arguments still is.
   */
  async refreshServed(): Promise<void> {
    let changed = false;
    for (const name of this.halves.keys()) {
      const d = await this.policy.decision(name, undefined, this.vm);
      const now = d.verdict !== 'deny';
      const before = this.decided.get(name);
      if (before === now) continue;
      this.decided.set(name, now);
      changed = true;
      // Not serving a portal is a decision too: one audit line when a row shuts it (or the policy cannot be read), one when it opens again.
      if (!now) {
        audit({ vm: this.vm.name, portal: name, request: 'served portals', decision: 'deny', reason: d.error ? 'failure' : 'policy', grant: null, asked: { served: false }, ...(d.row ? { rule: describeRow(d.row) } : {}) });
      } else if (before === false) {
        audit({ vm: this.vm.name, portal: name, request: 'served portals', decision: 'allow', reason: 'policy', grant: null, asked: { served: true } });
      }
    }
    if (!changed) return;
    this.served = [...this.halves.keys()].filter((p) => this.decided.get(p));
    this.log.info({ portals: this.served }, 'the portals this VM is served');
    this.conn?.notify(PortalsChanged, { portals: this.served });
  }


  /** This VM's guest while one is connected: another VM's portal may hand it something (OpenURI's target VM). */
  get guest(): GuestPeer | undefined {
    return this.connected ? this.conn : undefined;
  }

  get connected(): boolean {
    return !!this.conn && !this.conn.isClosed && this.conn.negotiatedVersion !== undefined;
  }

  /** A link arrived on this VM's endpoint. */
  attach(stream: Duplex, endpoint: string): Connection {
    const previous = this.conn;
    const conn = new Connection({ role: 'host', stream, methods: METHODS, handlers: this.handlers, notificationHandlers: this.notificationHandlers, log: this.log.child({ endpoint }) });
    this.conn = conn;
    previous?.close('replaced by a new connection from the same VM');
    // A second hello on a virtio-serial link is a restarted guest backend, maybe a rebooted guest.
    conn.on('hello', () => (this.mountConfirmed = undefined));
    conn.once('close', (reason: string) => {
      if (this.conn === conn) this.conn = undefined;
      // A close reason can quote what the guest sent (its own error message).
      this.churn('link-closed', 'info', { reason: guestLogText(reason, 200) }, 'guest link closed');
    });
    conn.acceptGuest(this.vm.name, undefined, { portals: () => this.served }).then(
      (hello) => {
        this.churn('link-up', 'info', { guestAgent: guestLogText(`${hello.agent.name} ${hello.agent.version}`, 100), endpoint }, 'guest connected');
        // A VM that connects gets its share plugged in, ready for its first file.
        this.ensureShare().catch((err: Error) => this.log.error({ err: err.message }, 'could not plug the share in'));
        void this.folders?.onGuestConnected();
        void this.networks?.onGuestConnected();
        void this.usb?.guestConnected(this.vm.name);
      },
      (err: Error) => this.churn('link-failed', 'warn', { endpoint, reason: guestLogText(err.message, 200) }, 'guest link failed before the handshake'),
    );
    return conn;
  }

  close(reason: string): void {
    this.conn?.close(reason);
    this.networks?.close();
    this.forgetUsb();
  }

  /** A guest that reconnects in a loop must not write a line per link: these share the VM's log bursts. */
  private churn(kind: string, level: LimitedLevel, fields: Record<string, unknown>, msg: string): void {
    peerLogLimiter.write(`vm:${this.vm.name}`, kind, this.log, level, fields, msg);
  }

  /** Plug the share in if needed and have the guest mount it now (best effort: its agent also polls). */
  async ensureShare(): Promise<void> {
    if (!this.share?.hotplug) return;
    await this.share.ensureAttached();
    hop(this.log, 'host.share-plugged');
    const conn = this.conn;
    if (!conn || !this.connected) return;
    // Asked once per link and per plug: a mounted share stays mounted until one of them changes.
    if (this.mountConfirmed?.conn === conn && this.mountConfirmed.generation === this.share.generation) return;
    const generation = this.share.generation;
    const r = await conn.request(ShareMount, { tag: this.vm.share.tag }, { signal: AbortSignal.timeout(4000) }).catch((err: Error) => ({ mounted: false, detail: err.message }));
    if (r.mounted) this.mountConfirmed = { conn, generation };
    else this.log.warn({ detail: r.detail }, 'the guest did not confirm the share is mounted');
  }

  /** Ask the guest to mount a folder share, or to unmount it before an unplug; never throws. */
  async askGuestAboutFolder(what: 'mount' | 'unmount', share: FolderShare): Promise<{ ok: boolean; detail: string }> {
    if (!this.connected) return { ok: false, detail: 'the guest is not connected' };
    const params = { name: share.name, tag: folderTag(share.name) };
    try {
      if (what === 'mount') {
        const r = await this.conn!.request(FolderMount, params, { signal: AbortSignal.timeout(8000) });
        return { ok: r.mounted, detail: guestLogText(r.detail, 200) };
      }
      const r = await this.conn!.request(FolderUnmount, params, { signal: AbortSignal.timeout(8000) });
      return { ok: r.unmounted, detail: guestLogText(r.detail, 200) };
    } catch (err) {
      // A guest side older than folder shares does not know the method: say what to do.
      const why = (err as Error).message;
      return { ok: false, detail: (err as { code?: string }).code === 'unknown-method' ? 'the guest side is older than folder shares; update xdp-vm in the VM' : guestLogText(why, 200) };
    }
  }

  /** Before an unplug: ask the guest to unmount, and go on whatever it says. */
  async askGuestToUnmount(): Promise<void> {
    if (!this.connected) return;
    const r = await this.conn!.request(ShareUnmount, { tag: this.vm.share.tag }, { signal: AbortSignal.timeout(8000) }).catch((err: Error) => ({ unmounted: false, detail: err.message }));
    this.log.info({ detail: r.detail }, r.unmounted ? 'the guest unmounted its share' : 'the guest could not unmount its share; unplugging anyway');
  }
}
