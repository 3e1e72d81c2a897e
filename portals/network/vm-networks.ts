import { bridgeOf, type Network, type NetworkName, type Networks, type VmConfig } from '../../src/config/schema.js';
import { audit, type AuditDecision, type AuditReason } from '../../src/host/audit.js';
import type { ConsentAsker, ConsentResult } from '../../src/host/consent.js';
import type { VmDevices } from '../../src/host/vm-devices.js';
import type { Logger } from '../../src/log.js';
import { describeRow } from '../../src/policy/model.js';
import type { PolicyDecider } from '../../src/policy/policy.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import { dependency, MissingDependencyError, whichProgram } from '../../src/deps.js';
import type { NetCapability, VmmEvent } from '../../src/vmm/adapter.js';
import { macFor } from './mac.js';
import { findPasst, passtFiles, startPasst, stopPasst, type PasstHandle } from './passt.js';
import { describeNetwork, joinQuestion } from './question.js';
import type { NetworkEntry } from './schema.js';
import { Taps, type HelperConnect } from './taps.js';

/**
 * One VM's networks on the host: which it is on, the passt behind each, and
 * the NICs in the VM, through its device layer. The guest's Join (with
 * consent), the host's CLI (without: the user on the host asked) and the
 * VM's start (an "Always" row) all come here, one hot-plug at a time.
 *
 * What lasts how long:
 * - an allow row naming the network ("Always", or set with `xdp-vm
 *   permissions`): attached whenever the VMM comes up or the guest connects;
 * - a join allowed once, or the CLI's attach: until leave, or the VM stops;
 * - a restarted daemon adopts the NICs it finds (by our device naming) and
 *   the passt still serving each (by its pid file), or the tap (by its record).
 *
 * A bridge or vm-only NIC is a tap the privileged helper makes for this user
 * on the network's bridge, handed to the VMM as a descriptor; the tap is
 * deleted when the NIC goes, or the VM stops. A user network is a passt of
 * ours when the VMM takes one (QEMU) and passt is installed, and otherwise the
 * VMM's own user networking (QEMU's slirp; libvirt's `type='user'`).
 */
const PORTAL = 'Network';

export interface VmNetworksDeps {
  vm: VmConfig;
  devices: VmDevices | undefined;
  policy: PolicyDecider;
  consent: ConsentAsker;
  nextRequestId: () => string;
  /** Tell the guest a NIC came or went; false when no guest is connected. */
  notify: (change: { network: string; joined: boolean; mac: string }) => boolean;
  /** Where passt's sockets and pid files go, and its logs; and each tap's record. */
  dirs: { runtime: string; logs: string };
  /** The privileged helper, for taps; without it only user networks can be joined. */
  helper?: HelperConnect;
  /** Why the helper cannot be asked now (src/helper/client.ts helperProblem), or undefined; asked before the user is. */
  helperProblem?: () => Promise<string | undefined>;
  /** Whether passt is installed; default: looked up on PATH each time. */
  passtInstalled?: () => boolean;
  log: Logger;
}

/** How a user network reaches a VM: a passt we start, or the VMM's own user networking. */
type UserRoute = 'passt' | 'own';

const passtOnPath = () => whichProgram(dependency('passt').candidates) !== undefined;

/** Who asked: the guest (consent), the host's CLI or bus API, or a row at VM start. */
export type Via = 'guest' | 'cli' | 'always';

interface Joined {
  mac: string;
  passt?: PasstHandle | undefined;
  tap?: string | undefined;
}

export class VmNetworks {
  private readonly joined = new Map<NetworkName, Joined>();
  private lock: Promise<unknown> = Promise.resolve();
  private readonly offs: (() => void)[] = [];
  private readonly log: Logger;
  private readonly taps: Taps | undefined;

  constructor(private readonly deps: VmNetworksDeps) {
    this.log = deps.log.child({ component: 'network' });
    this.taps = deps.helper ? new Taps(deps.helper, deps.dirs.runtime, deps.vm.name) : undefined;
    const d = deps.devices;
    if (d) {
      const up = () => void this.onVmmUp();
      const gone = () => this.onVmmGone();
      const detached = (e: Extract<VmmEvent, { type: 'device-detached' }>) => this.onDetached(e);
      d.on('up', up);
      d.on('gone', gone);
      d.on('device-detached', detached);
      this.offs.push(() => d.off('up', up), () => d.off('gone', gone), () => d.off('device-detached', detached));
    }
  }

  private get networks(): Networks {
    return this.deps.vm.networks ?? {};
  }

  /** The networks this VM is on now. */
  joinedNames(): NetworkName[] {
    return [...this.joined.keys()].sort();
  }

  macOf(name: string): string {
    return macFor(this.deps.vm.name, name);
  }

  /** The networks this VM may ask for (no row denies it), with whether it is on each. */
  async list(): Promise<NetworkEntry[]> {
    const out: NetworkEntry[] = [];
    for (const [name, net] of Object.entries(this.networks)) {
      const d = await this.deps.policy.decision(PORTAL, name, this.deps.vm);
      if (d.verdict === 'deny') continue;
      out.push({ name, type: net.type, description: describeNetwork(net), joined: this.joined.has(name) });
    }
    return out;
  }

  /**
   * Join `name`: from the guest, only if the policy or the user allows it;
   * from the CLI, the user on the host asked. Resolves with the NIC's MAC
   * once it is plugged in; the guest's DHCP client does the rest.
   */
  async join(name: string, via: 'guest' | 'cli', signal?: AbortSignal): Promise<{ network: NetworkName; mac: string }> {
    const request = this.deps.nextRequestId();
    const net = this.network(name, request, via);
    const mac = this.macOf(name);
    if (this.joined.has(name)) return { network: name, mac };
    // Asking the user is pointless when it cannot be done: say why first.
    this.usable(name, net, request, via);
    const missing = net.type === 'user' ? undefined : await this.deps.helperProblem?.();
    if (missing) {
      const why = `could not join '${name}': ${missing}`;
      this.record(request, 'error', 'failure', { network: name, via, why: missing });
      throw new ProtocolError('failed', why);
    }
    let consent: ConsentResult = { allowed: true, reason: 'cli' };
    if (via === 'guest') {
      const q = joinQuestion(this.deps.vm.label, name, net);
      consent = await this.deps.consent({ vm: this.deps.vm, portal: PORTAL, arg: name, requestId: request, summary: q.summary, details: q.details }, signal);
      if (!consent.allowed) {
        // requestConsent wrote the decision's audit line.
        this.log.info({ network: name, reason: consent.reason }, 'join refused');
        throw new ProtocolError('denied', refusal(name, consent));
      }
    }
    await this.serialized(async () => {
      if (this.joined.has(name)) return;
      await this.attach(name, net, request, { via, reason: consent.reason });
    });
    return { network: name, mac };
  }

  /** Unplug the NIC and stop its passt; false when the VM is not on `name`. */
  async leave(name: string, via: 'guest' | 'cli'): Promise<boolean> {
    const request = this.deps.nextRequestId();
    const net = this.network(name, request, via);
    return this.serialized(async () => {
      const j = this.joined.get(name);
      if (!j) return false;
      const cap = this.deps.devices?.require('net');
      try {
        await cap?.detachNet(name);
      } catch (err) {
        this.record(request, 'error', 'failure', { network: name, type: net.type, via, detached: false, why: (err as Error).message });
        throw new ProtocolError('failed', `could not unplug the NIC on '${name}': ${(err as Error).message}`);
      }
      this.joined.delete(name);
      const tapRemoved = await this.release(name, j);
      this.record(request, 'revoke', via === 'cli' ? 'cli' : 'user', { network: name, type: net.type, via, detached: true, mac: j.mac, ...(j.tap ? { tap: j.tap, tapRemoved } : {}) });
      this.log.info({ network: name, via }, 'left the network');
      this.deps.notify({ network: name, joined: false, mac: j.mac });
      return true;
    });
  }

  /** The guest connected (booted, or its backend restarted): what an "Always" row wants, it gets. */
  async onGuestConnected(): Promise<void> {
    if (this.deps.devices?.vmm) await this.serialized(() => this.attachAlways());
  }

  /** The daemon is going: the VMs keep their NICs, and each passt keeps serving. */
  close(): void {
    for (const off of this.offs) off();
  }

  private network(name: string, request: string, via: Via): Network {
    const net = Object.hasOwn(this.networks, name) ? this.networks[name] : undefined;
    if (net) return net;
    const names = Object.keys(this.networks);
    const why = `there is no network '${name}' on this host; configured: ${names.join(', ') || 'none'}`;
    this.record(request, 'error', 'failure', { network: name, via, why });
    throw new ProtocolError('invalid-params', why);
  }

  /** Throws, with an audit line, when `net` cannot be joined here now. */
  private usable(name: string, net: Network, request: string, via: Via): void {
    let why: string | undefined;
    if (net.type !== 'user' && !this.taps) why = `network '${name}' is a ${net.type} network, and this daemon has no privileged helper to make its tap`;
    else if (!this.deps.devices) why = `VM "${this.deps.vm.name}" has no VMM socket in its config ("vmm"), and NICs are hot-plugged through it`;
    else {
      try {
        const cap = this.deps.devices.require('net');
        if (net.type === 'user') this.userRoute(name, net, cap);
      } catch (err) {
        why = (err as Error).message;
      }
    }
    if (!why) return;
    this.record(request, 'error', 'failure', { network: name, type: net.type, via, why });
    throw new ProtocolError('failed', why);
  }

  /** passt or the tap first, then the NIC; undone when the NIC cannot go in. Run under the lock. */
  private async attach(name: NetworkName, net: Network, request: string, how: { via: Via; reason: AuditReason; rule?: string }): Promise<void> {
    const facts = { network: name, type: net.type, via: how.via };
    const mac = this.macOf(name);
    let extra: Record<string, unknown> = {};
    try {
      const cap = this.deps.devices?.require('net');
      if (!cap) throw new Error(`VM "${this.deps.vm.name}" has no VMM socket in its config ("vmm")`);
      if (net.type === 'user' && this.userRoute(name, net, cap) === 'own') {
        await cap.attachNet({ id: name, backend: { type: 'user', forwards: net.forwards.map((f) => ({ host: f.host, guest: f.guest })) }, mac });
        this.joined.set(name, { mac });
        extra = { userNet: 'vmm', ...(net.forwards.length ? { forwards: net.forwards.map((f) => `${f.host}:${f.guest}`) } : {}) };
      } else if (net.type === 'user') {
        const passt = await startPasst(this.files(name), net.forwards, this.log.child({ network: name }));
        try {
          await cap.attachNet({ id: name, backend: { type: 'stream', socketPath: passt.socket }, mac });
        } catch (err) {
          await stopPasst(passt, this.log);
          throw err;
        }
        this.joined.set(name, { mac, passt });
        extra = { userNet: 'passt', ...(net.forwards.length ? { forwards: net.forwards.map((f) => `${f.host}:${f.guest}`) } : {}) };
      } else {
        if (!this.taps) throw new Error('this daemon has no privileged helper to make a tap');
        const bridge = bridgeOf(name, net);
        const t = await this.taps.create(name, bridge, net.type === 'vm-only');
        try {
          await cap.attachNet({ id: name, backend: { type: 'tap', tapName: t.tap, fd: t.fd }, mac });
        } catch (err) {
          await this.taps.remove(name, t.tap).catch((e: Error) => this.log.warn({ network: name, tap: t.tap, err: e.message }, 'could not remove the tap of a NIC that did not go in'));
          throw err;
        } finally {
          Taps.close(t.fd);
        }
        this.joined.set(name, { mac, tap: t.tap });
        extra = { bridge, tap: t.tap, ...(t.hostAddress ? { hostAddress: t.hostAddress } : {}) };
      }
    } catch (err) {
      const why = (err as Error).message;
      this.record(request, 'error', 'failure', { ...facts, attached: false, why });
      this.log.error({ ...facts, err: why }, 'could not attach the network');
      throw new ProtocolError('failed', `could not join '${name}': ${why}`);
    }
    this.record(request, 'allow', how.reason, { ...facts, attached: true, mac, ...extra }, how.rule);
    this.log.info({ ...facts, mac, ...extra }, 'joined the network');
    this.deps.notify({ network: name, joined: true, mac });
  }

  /**
   * Which user networking `net` gets on this VMM: passt when the VMM takes it
   * and it is installed, else the VMM's own. Throws, in words, when neither
   * can serve, or the VMM's own cannot forward the ports `net` forwards.
   */
  private userRoute(name: string, net: Extract<Network, { type: 'user' }>, cap: NetCapability): UserRoute {
    const { modes, ownForwards } = cap.userNetworking;
    const vmm = this.deps.devices?.vmm?.kind ?? 'this VMM';
    if (modes.includes('passt') && (this.deps.passtInstalled ?? passtOnPath)()) return 'passt';
    if (modes.includes('own')) {
      if (net.forwards.length && !ownForwards) {
        throw new Error(
          `network '${name}' forwards host ports (${net.forwards.map((f) => `${f.host}→${f.guest}`).join(', ')}), and ${vmm}'s own user networking cannot forward ports; ` +
            'remove the forwards, or reach this VM over a vm-only network',
        );
      }
      return 'own';
    }
    if (modes.includes('passt')) throw new MissingDependencyError(dependency('passt'));
    throw new Error(`network '${name}' is a user network, and ${vmm} has no user-mode networking; give this VM a bridge or vm-only network`);
  }

  private async onVmmUp(): Promise<void> {
    await this.serialized(async () => {
      await this.adopt();
      await this.attachAlways();
    }).catch((err: Error) => this.log.error({ err: err.message }, 'could not bring the VM\'s networks up'));
  }

  /** NICs the VM already has by our naming (a restarted daemon): they are joined, with the passt or tap still behind each. */
  private async adopt(): Promise<void> {
    const cap = this.deps.devices?.vmm?.net;
    if (!cap) return;
    for (const nic of await cap.listNet()) {
      if (!nic.id || this.joined.has(nic.id)) continue;
      if (!Object.hasOwn(this.networks, nic.id)) {
        this.log.warn({ nic: nic.deviceId }, 'the VM has a NIC of ours for a network no longer configured; leaving it alone');
        continue;
      }
      this.joined.set(nic.id, { mac: this.macOf(nic.id), passt: findPasst(this.files(nic.id)), tap: this.taps?.recorded(nic.id) });
      this.log.info({ network: nic.id, location: nic.location }, 'adopted the NIC the VM already has');
    }
  }

  /** Every network an allow row names for this VM, attached if it is not. A VM-wide row (no argument) joins nothing by itself. */
  private async attachAlways(): Promise<void> {
    for (const [name, net] of Object.entries(this.networks)) {
      if (this.joined.has(name)) continue;
      const d = await this.deps.policy.decision(PORTAL, name, this.deps.vm);
      if (d.verdict !== 'allow' || d.row?.arg !== name) continue;
      await this.attach(name, net, this.deps.nextRequestId(), { via: 'always', reason: 'policy', rule: describeRow(d.row) }).catch(() => undefined);
    }
  }

  /** The VM stopped: every NIC went with it, and each passt, with --one-off, quits as QEMU closes its socket; each tap is deleted. */
  private onVmmGone(): void {
    const gone = [...this.joined.entries()];
    this.joined.clear();
    for (const [name, j] of gone) {
      this.log.info({ network: name }, 'the VM stopped; off the network until it joins again');
      void this.release(name, j);
    }
  }

  /** What was behind a NIC that is gone: its passt stopped, or its tap deleted. Never throws; false when the tap stayed. */
  private async release(name: string, j: Joined): Promise<boolean> {
    if (j.passt) await stopPasst(j.passt, this.log);
    if (!j.tap || !this.taps) return true;
    try {
      await this.taps.remove(name, j.tap);
      return true;
    } catch (err) {
      this.log.warn({ network: name, tap: j.tap, err: (err as Error).message }, 'could not delete the tap of a NIC that is gone');
      return false;
    }
  }

  private onDetached(e: Extract<VmmEvent, { type: 'device-detached' }>): void {
    if (e.kind !== 'net' || e.expected) return;
    const j = this.joined.get(e.id);
    if (!j) return;
    this.joined.delete(e.id);
    void this.release(e.id, j);
    this.record(this.deps.nextRequestId(), 'revoke', 'failure', { network: e.id, detached: true, why: 'the NIC was removed without our asking (by the guest or the VMM)' });
    this.deps.notify({ network: e.id, joined: false, mac: j.mac });
  }

  private files(name: string) {
    return passtFiles(this.deps.dirs.runtime, this.deps.dirs.logs, this.deps.vm.name, name);
  }

  private record(request: string, decision: AuditDecision, reason: AuditReason, asked: Record<string, unknown>, rule?: string): void {
    audit({ vm: this.deps.vm.name, portal: PORTAL, request, decision, reason, grant: null, asked, ...(rule ? { rule } : {}) });
  }

  /** One hot-plug at a time per VM: a guest's join, the CLI's attach and a VM start must not race for a NIC. */
  private serialized<T>(op: () => Promise<T>): Promise<T> {
    const run = this.lock.then(op, op);
    this.lock = run.catch(() => undefined);
    return run;
  }
}

function refusal(name: string, consent: ConsentResult): string {
  if (consent.reason === 'policy') return `a policy row refuses this VM the network '${name}' (xdp-vm permissions on the host)`;
  if (consent.reason === 'timeout') return `nobody answered the host's question in time; not joined to '${name}'`;
  return `the user did not allow this VM to join '${name}'`;
}
