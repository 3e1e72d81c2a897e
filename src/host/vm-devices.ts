import { EventEmitter } from 'node:events';
import { Backoff } from '../backoff.js';
import type { Logger } from '../log.js';
import { ProtocolError } from '../protocol/messages.js';
import { CAPABILITY_NAMES, capabilitiesOf, lackOf, type CapabilityName, type VmmAdapter, type VmmCapabilities, type VmmEvent } from '../vmm/adapter.js';

/**
 * A VM's device layer: its one connection to its VMM, kept up with the one
 * backoff, through which shares, USB devices and NICs all go. Whoever needs
 * the VMM (the document share today; USB and networks next) listens here
 * instead of opening its own connection.
 *
 * Events: 'up' (adapter) when the VMM is reachable; 'gone' (reason) when it
 * went away (the VM stopped); 'device-detached' (event) for every device the
 * VMM took out, asked for or not.
 */
export class VmDevices extends EventEmitter {
  private adapter: VmmAdapter | undefined;
  private problem = '';
  private closed = false;
  private readonly backoff = new Backoff(500, 5000);

  constructor(
    private readonly connector: () => Promise<VmmAdapter>,
    private readonly log: Logger,
  ) {
    super();
  }

  /** The VMM, while it is reachable. */
  get vmm(): VmmAdapter | undefined {
    return this.adapter;
  }

  /** Why there is no VMM right now, in words; empty while there is one. */
  get detail(): string {
    if (this.adapter) return '';
    return this.problem ? `VMM not reachable: ${this.problem}` : 'VMM not connected yet';
  }

  /** What the VMM can do, and in words what it cannot; undefined while it is not reachable. */
  capabilities(): { has: CapabilityName[]; lacks: Partial<Record<CapabilityName, string>> } | undefined {
    const vmm = this.adapter;
    if (!vmm) return undefined;
    const lacks: Partial<Record<CapabilityName, string>> = {};
    for (const c of CAPABILITY_NAMES) {
      const why = lackOf(vmm, c);
      if (why) lacks[c] = why;
    }
    return { has: capabilitiesOf(vmm), lacks };
  }

  /**
   * The capability a portal needs, or an error the guest can be given as it
   * is: it names the VMM and what it lacks, or says the VMM is not reachable.
   */
  require<C extends CapabilityName>(capability: C): NonNullable<VmmCapabilities[C]> {
    const vmm = this.adapter;
    if (!vmm) throw new ProtocolError('failed', `the host cannot reach this VM's VMM (${this.detail})`);
    const cap = vmm[capability];
    if (!cap) throw new ProtocolError('failed', lackOf(vmm, capability)!);
    return cap as NonNullable<VmmCapabilities[C]>;
  }

  /** The first try is awaited, so a reachable VMM is up before the daemon says it is ready; later ones back off. */
  async start(): Promise<void> {
    await this.connect();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.backoff.stop();
    const vmm = this.adapter;
    this.adapter = undefined;
    await vmm?.close();
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    try {
      const vmm = await this.connector();
      if (this.closed) return void (await vmm.close());
      this.adapter = vmm;
      this.problem = '';
      this.backoff.reset();
      vmm.events.subscribe((e) => this.onEvent(vmm, e));
      this.log.info({ vmm: vmm.kind, capabilities: capabilitiesOf(vmm) }, 'connected to the VMM');
      this.emit('up', vmm);
    } catch (err) {
      const problem = (err as Error).message;
      if (problem !== this.problem) this.log.info(`VMM not reachable (the VM may be off): ${problem}`);
      this.problem = problem;
      this.backoff.schedule(() => void this.connect());
    }
  }

  private onEvent(vmm: VmmAdapter, e: VmmEvent): void {
    if (vmm !== this.adapter) return;
    if (e.type === 'device-detached') {
      this.emit('device-detached', e);
      return;
    }
    this.adapter = undefined;
    this.problem = e.reason;
    this.log.info({ reason: e.reason }, 'the VMM went away (the VM stopped)');
    this.emit('gone', e.reason);
    this.backoff.schedule(() => void this.connect());
  }
}
