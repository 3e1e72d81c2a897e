import { EventEmitter } from 'node:events';
import type { VmConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import { lackOf, type ShareCapability, type VmmEvent } from '../vmm/adapter.js';
import type { VmDevices } from './vm-devices.js';
import { VirtiofsdSupervisor, type ShareState, type VirtiofsdOptions } from './virtiofsd.js';

/**
 * One virtio-fs share of a VM, end to end on the host: the virtiofsd serving
 * it and, when the VM has a VMM control socket, the device in the VM,
 * plugged through the VM's device layer (vm-devices.ts). The VM's document
 * share is one (its view of the document store); each folder share is
 * another (src/host/folders/).
 *
 * virtiofsd is always listening (started again each time a VM lets go of
 * it), so a VM may be started with the share attached. When the VM has a VMM
 * control socket, the share is also plugged into the running VM when its
 * guest connects, when it is wanted (the document share: its first grant), or
 * when the VM comes back and it is wanted; a VM that already has it is left as
 * it is. Unplugging asks the guest to unmount first.
 */
export const SHARE_ID = 'xdpvm-doc';

export interface VmShareDeps {
  vm: VmConfig;
  /** Our id for it, from which the VMM's device ids derive. */
  id: string;
  /** The virtiofs tag the guest mounts. */
  tag: string;
  /** It in words, for logs: "the document share", 'folder share "photos"'. */
  what: string;
  virtiofsd: Omit<VirtiofsdOptions, 'stillAttached' | 'log'>;
  log: Logger;
  /** The VM's device layer; undefined for VMs without a VMM socket. */
  devices?: VmDevices;
  /** Whether it is worth plugging in when the VM comes up (the document share: the VM has documents). */
  wanted: () => Promise<boolean>;
  /** Ask the guest to unmount; resolves whatever the answer. */
  askGuestToUnmount: () => Promise<void>;
}

export class VmShare extends EventEmitter {
  readonly supervisor: VirtiofsdSupervisor;
  private attached = false;
  private closed = false;
  private attaching: Promise<void> | undefined;
  /** Bumped whenever the device may have come or gone, so a guest's "mounted" can be trusted until then. */
  generation = 0;

  constructor(private readonly deps: VmShareDeps) {
    super();
    this.supervisor = new VirtiofsdSupervisor({
      ...deps.virtiofsd,
      log: deps.log.child({ component: 'virtiofsd' }),
      stillAttached: () => this.deviceIsPlugged(),
    });
    const devices = deps.devices;
    if (devices) {
      const up = () => void this.onVmmUp();
      const gone = (reason: string) => this.onVmmGone(reason);
      const detached = (e: Extract<VmmEvent, { type: 'device-detached' }>) => this.onDetached(e);
      devices.on('up', up).on('gone', gone).on('device-detached', detached);
      this.unlisten = () => void devices.off('up', up).off('gone', gone).off('device-detached', detached);
    }
  }

  private unlisten: () => void = () => undefined;

  get hotplug(): boolean {
    return !!this.deps.devices;
  }

  /** The VMM's share capability, while the VMM is reachable and has one. */
  private get vmm(): ShareCapability | undefined {
    return this.deps.devices?.vmm?.shares;
  }

  get state(): ShareState {
    return this.supervisor.state;
  }

  get detail(): string {
    if (this.supervisor.state === 'failed') return this.supervisor.detail;
    const devices = this.deps.devices;
    if (devices && !devices.vmm) return devices.detail;
    if (devices?.vmm && !this.vmm) return lackOf(devices.vmm, 'shares')!;
    return this.supervisor.detail;
  }

  /** Never throws: one VM's broken share must not keep the daemon from serving the others. */
  async start(): Promise<void> {
    try {
      await this.supervisor.start();
    } catch (err) {
      this.supervisor.failedToStart((err as Error).message);
      return;
    }
    // The device layer may have reached the VMM before virtiofsd was up.
    if (this.deps.devices?.vmm) await this.onVmmUp();
  }

  /** Plug the share in if it is not: idempotent, and shared by concurrent callers. */
  ensureAttached(): Promise<void> {
    if (!this.hotplug) return Promise.resolve();
    this.attaching ??= this.attach().finally(() => (this.attaching = undefined));
    return this.attaching;
  }

  /** Ask the guest to unmount, unplug, and let virtiofsd go. */
  async detach(): Promise<void> {
    if (!this.vmm || !this.attached) return;
    await this.vmm.detachShare(this.deps.id, { beforeDetach: () => this.deps.askGuestToUnmount() });
    this.attached = false;
    this.generation++;
    this.supervisor.markAttached(false);
    this.deps.log.info(`unplugged ${this.deps.what}`);
  }

  /** For good: unplug it (the guest unmounts first) and stop its virtiofsd. */
  async remove(): Promise<void> {
    this.closed = true;
    await this.attaching?.catch(() => undefined);
    if (this.vmm && (this.attached || (await this.deviceIsPlugged()))) {
      this.attached = true;
      await this.detach();
    }
    await this.supervisor.stop();
    this.unlisten();
  }

  /** The daemon is going: the guest keeps its share and virtiofsd keeps serving it. */
  close(): void {
    this.closed = true;
    this.supervisor.release();
  }

  private async attach(): Promise<void> {
    const vmm = this.vmm;
    if (!vmm || this.supervisor.state === 'failed') return;
    const present = (await vmm.listShares()).find((s) => s.tag === this.deps.tag);
    if (present) {
      this.attached = true;
      if (!present.attachedHere && present.id !== this.deps.id) this.deps.log.info({ device: present.deviceId }, `the VM already has ${this.deps.what} (started with it); leaving it as it is`);
      this.supervisor.markAttached(true);
      return;
    }
    await this.supervisor.start();
    this.generation++;
    const done = await vmm.attachShare({ id: this.deps.id, tag: this.deps.tag, socketPath: this.deps.virtiofsd.socket, queueSize: 1024 });
    this.attached = true;
    this.supervisor.markAttached(true);
    this.deps.log.info({ device: done.deviceId, port: done.location }, `plugged ${this.deps.what} into the running VM`);
  }

  private async deviceIsPlugged(): Promise<boolean> {
    try {
      return !!this.vmm && (await this.vmm.listShares()).some((s) => s.tag === this.deps.tag);
    } catch {
      return false;
    }
  }

  /** The VMM is reachable: plug the share in if the VM has it already (adopt it) or it is wanted. */
  private async onVmmUp(): Promise<void> {
    if (this.closed || !this.vmm || this.supervisor.state === 'stopped' || this.supervisor.state === 'starting') return;
    try {
      const plugged = await this.deviceIsPlugged();
      if (plugged || (await this.deps.wanted())) await this.ensureAttached();
    } catch (err) {
      this.deps.log.error({ err: (err as Error).message }, 'could not plug the share in');
    }
  }

  private onDetached(e: Extract<VmmEvent, { type: 'device-detached' }>): void {
    if (e.kind !== 'share' || e.expected || e.id !== this.deps.id) return;
    this.attached = false;
    this.generation++;
    this.supervisor.markAttached(false);
    this.deps.log.warn({ device: e.deviceId }, `the VM removed ${this.deps.what} by itself`);
  }

  private onVmmGone(reason: string): void {
    this.attached = false;
    this.generation++;
    this.deps.log.info({ reason }, 'the VM stopped; its virtiofsd follows');
    // A failed share died with that VM: the next boot gets a fresh virtiofsd.
    if (this.supervisor.state === 'failed') {
      void this.supervisor
        .stop()
        .then(() => (this.closed ? undefined : this.supervisor.start()))
        .catch((err: Error) => this.deps.log.error({ err: err.message }, 'could not start a fresh virtiofsd'));
    }
  }
}
