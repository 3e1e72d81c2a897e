import { mkdirSync, readdirSync, readFileSync, statSync, chmodSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { mountVirtiofs, unmount } from '../native/mount.js';
import type { Logger } from '../log.js';
import { hop } from '../trace.js';
import { listenUnix } from '../transport/hybrid-vsock.js';
import { MOUNT_AGENT_SOCKET } from './mount-agent-client.js';
import { UsbAgent } from './usb-agent.js';
import { FolderName, folderNameOfTag, folderTag, GUEST_SHARES_DIR, guestPathOfFolder } from '../host/folders/spec.js';

/**
 * The guest's root service for the document share: it mounts the share when
 * the host plugs the virtio-fs device in, lazily unmounts it when the device
 * is gone, and unmounts on request (the host asks before it unplugs). It is
 * separate from the session backend so that backend never needs privileges.
 *
 * Folder shares are mounted on request only (the host asks, through the
 * backend, after each plug and each time the guest connects), each at
 * /run/xdp-vm/shares/NAME, and unmounted on request or when their device is
 * gone.
 */
const VIRTIOFS_DRIVER = '/sys/bus/virtio/drivers/virtiofs';

export interface MountAgentOptions {
  mountPoint: string;
  tag: string;
  socket?: string;
  pollMs?: number;
  log: Logger;
}

export function isMounted(mountPoint: string, tag: string, mounts = readFileSync('/proc/self/mounts', 'utf8')): boolean {
  return mounts.split('\n').some((l) => {
    const [source, target, type] = l.split(' ');
    return type === 'virtiofs' && source === tag && target === mountPoint;
  });
}

function virtiofsDevices(): number {
  try {
    return readdirSync(VIRTIOFS_DRIVER).filter((n) => /^virtio\d+$/.test(n)).length;
  } catch {
    return 0;
  }
}

export class MountAgent {
  private timer: NodeJS.Timeout | undefined;
  private server: net.Server | undefined;
  private busy = false;
  private lastDevices = -1;
  private lastAttempt = 0;
  /** USB/IP: exporting this VM's devices (a provider VM) and importing the host's. */
  private readonly usb: UsbAgent;

  constructor(private readonly opts: MountAgentOptions) {
    this.usb = new UsbAgent({ log: opts.log });
  }

  async start(): Promise<void> {
    mkdirSync(this.opts.mountPoint, { recursive: true });
    const socket = this.opts.socket ?? MOUNT_AGENT_SOCKET;
    mkdirSync(path.dirname(socket), { recursive: true });
    this.server = await listenUnix(socket, (c) => this.serve(c));
    // Any session in this VM may ask for an unmount: the VM is one trust domain.
    chmodSync(socket, 0o666);
    this.timer = setInterval(() => void this.tick(), this.opts.pollMs ?? 100);
    await this.tick();
  }

  stop(): void {
    clearInterval(this.timer);
    this.server?.close();
  }

  get mounted(): boolean {
    return isMounted(this.opts.mountPoint, this.opts.tag);
  }

  async unmount(): Promise<string> {
    if (!this.mounted) return 'not mounted';
    try {
      unmount(this.opts.mountPoint);
      this.opts.log.info({ mountPoint: this.opts.mountPoint }, 'unmounted the document share on the host\'s request');
      return 'unmounted';
    } catch (err) {
      // Busy: files are open. Detach it anyway so the host can unplug cleanly.
      unmount(this.opts.mountPoint, { lazy: true });
      this.opts.log.warn({ err: (err as Error).message }, 'share was busy; detached it lazily');
      return 'detached lazily (files were open)';
    }
  }

  /** Mount as soon as the device is there (it binds a few tens of ms after the plug). */
  async mountNow(timeoutMs = 3000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    hop(this.opts.log, 'guest.mount-asked');
    while (!this.mounted) {
      if (Date.now() > deadline) throw new Error(`the share "${this.opts.tag}" did not appear within ${timeoutMs} ms`);
      if (virtiofsDevices() > 0 && !this.busy) this.mount();
      if (!this.mounted) await new Promise((r) => setTimeout(r, 5));
    }
    hop(this.opts.log, 'guest.mounted');
    return 'mounted';
  }

  /** Mount folder share NAME (its tag derives from the name), waiting for its device to bind. */
  async mountFolder(name: string, timeoutMs = 3000): Promise<string> {
    const mountPoint = guestPathOfFolder(name);
    const tag = folderTag(name);
    if (isMounted(mountPoint, tag)) return `already mounted at ${mountPoint}`;
    mkdirSync(mountPoint, { recursive: true, mode: 0o755 });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        mountVirtiofs(tag, mountPoint);
        this.opts.log.info({ tag, mountPoint }, 'mounted a folder share');
        return `mounted at ${mountPoint}`;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`folder share "${name}" could not be mounted within ${timeoutMs} ms: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  async unmountFolder(name: string): Promise<string> {
    const mountPoint = guestPathOfFolder(name);
    if (!isMounted(mountPoint, folderTag(name))) return 'not mounted';
    try {
      unmount(mountPoint);
      this.opts.log.info({ mountPoint }, 'unmounted a folder share on the host\'s request');
      return 'unmounted';
    } catch (err) {
      unmount(mountPoint, { lazy: true });
      this.opts.log.warn({ mountPoint, err: (err as Error).message }, 'folder share was busy; detached it lazily');
      return 'detached lazily (files were open)';
    }
  }

  /** Folder shares whose device went away without asking (the VM's user unplugged it, QEMU dropped it). */
  private dropDeadFolders(mounts = readFileSync('/proc/self/mounts', 'utf8')): void {
    for (const l of mounts.split('\n')) {
      const [source, target, type] = l.split(' ');
      if (type !== 'virtiofs' || !source || !target?.startsWith(`${GUEST_SHARES_DIR}/`) || !folderNameOfTag(source)) continue;
      if (!this.gone(target)) continue;
      try {
        unmount(target, { lazy: true });
        this.opts.log.info({ mountPoint: target }, 'a folder share\'s device is gone; unmounted it');
      } catch {
        /* someone else did */
      }
    }
  }

  private async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      this.dropDeadFolders();
      const devices = virtiofsDevices();
      const mounted = this.mounted;
      if (mounted && this.gone(this.opts.mountPoint)) {
        try {
          unmount(this.opts.mountPoint, { lazy: true });
        } catch {
          /* someone else did */
        }
        this.opts.log.info({ mountPoint: this.opts.mountPoint }, 'the host unplugged the document share; unmounted it');
      } else if (!mounted && devices > 0 && (devices !== this.lastDevices || Date.now() - this.lastAttempt > 1000)) {
        this.lastAttempt = Date.now();
        this.mount();
      }
      this.lastDevices = devices;
    } finally {
      this.busy = false;
    }
  }

  /** A virtiofs mount whose device was unplugged answers ENOTCONN. */
  private gone(mountPoint: string): boolean {
    try {
      statSync(mountPoint);
      return false;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOTCONN';
    }
  }

  private mount(): void {
    try {
      mountVirtiofs(this.opts.tag, this.opts.mountPoint);
      this.opts.log.info({ tag: this.opts.tag, mountPoint: this.opts.mountPoint }, 'mounted the document share');
    } catch (err) {
      // Another virtio-fs device (not ours) is present, or ours is still binding.
      this.opts.log.debug({ err: (err as Error).message }, 'share not mountable yet');
    }
  }

  private serve(c: net.Socket): void {
    let line = '';
    c.setEncoding('utf8');
    c.on('error', () => undefined);
    c.on('data', (chunk: string) => {
      line += chunk;
      if (line.length > 256) return void c.destroy();
      if (!line.includes('\n')) return;
      const cmd = line.trim();
      if (cmd.startsWith('usb-')) {
        this.usb.command(cmd).then(
          (detail) => c.end(`ok ${detail}\n`),
          (err: Error) => c.end(`error ${err.message.split('\n')[0]}\n`),
        );
        return;
      }
      const folder = /^(mount-folder|unmount-folder) (\S+)$/.exec(cmd);
      if (folder) {
        const name = FolderName.safeParse(folder[2]);
        if (!name.success) return void c.end('error not a share name\n');
        (folder[1] === 'mount-folder' ? this.mountFolder(name.data) : this.unmountFolder(name.data)).then(
          (detail) => c.end(`ok ${detail}\n`),
          (err: Error) => c.end(`error ${err.message.split('\n')[0]}\n`),
        );
      } else if (cmd === 'unmount') {
        this.unmount().then(
          (detail) => c.end(`ok ${detail}\n`),
          (err: Error) => c.end(`error ${err.message.split('\n')[0]}\n`),
        );
      } else if (cmd === 'mount') {
        this.mountNow().then(
          (detail) => c.end(`ok ${detail}\n`),
          (err: Error) => c.end(`error ${err.message.split('\n')[0]}\n`),
        );
      } else if (cmd === 'status') c.end(`ok ${this.mounted ? 'mounted' : 'not mounted'}\n`);
      else c.end('error unknown command\n');
    });
  }
}
