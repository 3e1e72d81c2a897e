import path from 'node:path';
import type { VmConfig } from '../../config/schema.js';
import type { Logger } from '../../log.js';
import type { VmDevices } from '../vm-devices.js';
import { VmShare } from '../vm-share.js';
import type { ShareState } from '../virtiofsd.js';
import { folderTag, guestPathOfFolder, type FolderShare } from './spec.js';

/**
 * A VM's folder shares on the host: each its own VmShare (its own
 * unprivileged virtiofsd, its own virtio-fs device), plugged in through the
 * VM's device layer when the VMM is reachable, and mounted by the guest when
 * its guest side is connected. Persistence is the store's; this keeps what
 * runs.
 */
export interface VmFoldersDeps {
  vm: VmConfig;
  devices: VmDevices | undefined;
  virtiofsd: { binary: string; dir: string; logDir: string };
  log: Logger;
  /** Ask the guest to mount or unmount a share; both resolve whatever the answer (false when no guest is connected). */
  guest: {
    mount(share: FolderShare): Promise<{ ok: boolean; detail: string }>;
    unmount(share: FolderShare): Promise<{ ok: boolean; detail: string }>;
  };
}

export interface FolderStatus {
  share: FolderShare;
  guestPath: string;
  state: ShareState;
  detail: string;
}

export class VmFolders {
  private readonly running = new Map<string, { spec: FolderShare; share: VmShare }>();

  constructor(private readonly deps: VmFoldersDeps) {}

  /** Why this VM cannot take folder shares at all, or undefined. */
  get unable(): string | undefined {
    if (!this.deps.devices) return `VM "${this.deps.vm.name}" has no VMM socket in its config ("vmm"), and folder shares are hot-plugged through it`;
    return undefined;
  }

  list(): FolderStatus[] {
    return [...this.running.values()].map(({ spec, share }) => ({ share: spec, guestPath: guestPathOfFolder(spec.name), state: share.state, detail: share.detail }));
  }

  /**
   * Serve a share: its virtiofsd started (or adopted), the device plugged in
   * if the VMM is reachable, the guest asked to mount it if connected.
   * `strict` (a new share from the user) throws when any of that fails, after
   * undoing it; a share from the store stays listed with what went wrong.
   */
  async add(spec: FolderShare, opts: { strict: boolean }): Promise<FolderStatus> {
    const unable = this.unable;
    if (unable) throw new Error(unable);
    if (this.running.has(spec.name)) throw new Error(`VM "${spec.vm}" already serves a share named "${spec.name}"`);
    const share = this.shareOf(spec);
    this.running.set(spec.name, { spec, share });
    await share.start();
    try {
      if (share.state === 'failed') throw new Error(share.detail);
      if (this.deps.devices?.vmm) {
        await share.ensureAttached();
        await this.mountInGuest(spec);
      }
    } catch (err) {
      const why = (err as Error).message;
      this.deps.log.error({ share: spec.name, err: why }, 'could not serve the folder share');
      if (opts.strict) {
        this.running.delete(spec.name);
        await share.remove().catch(() => undefined);
        throw new Error(`could not share ${spec.path} with VM "${spec.vm}": ${why}`, { cause: err });
      }
    }
    return this.statusOf(spec.name)!;
  }

  /** Unplug (the guest unmounts first) and stop its virtiofsd; false when there is no such share. */
  async remove(name: string): Promise<boolean> {
    const r = this.running.get(name);
    if (!r) return false;
    this.running.delete(name);
    await r.share.remove();
    return true;
  }

  /** The guest connected (booted, or its backend restarted): plug in what is missing and have it all mounted. */
  async onGuestConnected(): Promise<void> {
    for (const { spec, share } of this.running.values()) {
      try {
        await share.ensureAttached();
        await this.mountInGuest(spec);
      } catch (err) {
        this.deps.log.error({ share: spec.name, err: (err as Error).message }, 'could not plug the folder share in');
      }
    }
  }

  /** The daemon is going: guests keep their shares, and each virtiofsd keeps serving. */
  close(): void {
    for (const { share } of this.running.values()) share.close();
  }

  private statusOf(name: string): FolderStatus | undefined {
    return this.list().find((s) => s.share.name === name);
  }

  private async mountInGuest(spec: FolderShare): Promise<void> {
    const r = await this.deps.guest.mount(spec);
    if (r.ok) this.deps.log.info({ share: spec.name, guestPath: guestPathOfFolder(spec.name) }, 'the guest mounted the folder share');
    else this.deps.log.warn({ share: spec.name, detail: r.detail }, 'the guest did not mount the folder share (it is mounted when the guest connects)');
  }

  private shareOf(spec: FolderShare): VmShare {
    const tag = folderTag(spec.name);
    const { vm } = this.deps;
    return new VmShare({
      vm,
      id: tag,
      tag,
      what: `folder share "${spec.name}"`,
      virtiofsd: {
        vm: vm.name,
        binary: this.deps.virtiofsd.binary,
        source: spec.path,
        socket: path.join(this.deps.virtiofsd.dir, `${vm.name}-f-${spec.name}.sock`),
        // The VM's share cache (default none). Measured here (npm run bench, TCG): a 256 MiB read at
        // 40 MiB/s with cache=auto against 350 with none, whose reads reach virtiofsd whole; and with
        // none a host-side change is never stale in the guest.
        cache: vm.share.cache,
        readOnly: spec.readOnly,
        logFile: path.join(this.deps.virtiofsd.logDir, `virtiofsd-${vm.name}-f-${spec.name}.log`),
      },
      log: this.deps.log.child({ component: 'folder', share: spec.name }),
      ...(this.deps.devices ? { devices: this.deps.devices } : {}),
      wanted: async () => true,
      askGuestToUnmount: async () => {
        const r = await this.deps.guest.unmount(spec);
        this.deps.log.info({ share: spec.name, detail: r.detail }, r.ok ? 'the guest unmounted the folder share' : 'the guest could not unmount the folder share; unplugging anyway');
      },
    });
  }
}
