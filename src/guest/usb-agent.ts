import { execFileSync } from 'node:child_process';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../log.js';
import { socketFd } from '../native/fds.js';
import { busIdProblem } from '../helper/commands.js';
import { listUsbDevices, type UsbHostDevice } from '../usb/devices.js';
import { relayBoth, streamPair } from '../usb/stream-pair.js';
import {
  attachToVhci,
  bindToUsbipHost,
  detachFromVhci,
  exportableDevice,
  exportOnSocket,
  stopExport,
  unbindFromUsbipHost,
  usbDriverOf,
  USBIP_HOST,
  UsbipError,
  VSOCK_RESERVED_BELOW,
  type UsbipChannel,
} from '../usb/usbip.js';
import { VMADDR_CID_HOST, VsockServer, type VsockSocket } from '../transport/af-vsock.js';
import { findPort, openPort, portNameProblem } from './vport.js';

/**
 * The root agent's USB/IP half. On a VM that provides USB devices (Qubes'
 * sys-usb), it lists the VM's own devices and exports one at the host's
 * request: the device is bound to usbip-host and handed one end of a stream
 * whose other end is relayed, byte for byte, to the raw channel the host
 * hot-plugged for it. On the VM that gets the device, it imports: vhci-hcd
 * is handed one end of a stream relayed the same way to that VM's channel.
 * The host daemon relays between the two channels; the URBs are the
 * kernels' own protocol, which nothing here reads.
 *
 * Each stream is a Unix socket pair made in this process (Node has no
 * socketpair(2)); the end the kernel gets is destroyed in the tick it is
 * handed over, so Node never reads a byte of it and the kernel's reference
 * (sockfd_lookup) is what keeps it open (src/usb/usbip.ts).
 *
 * Where the VM's link is vsock (cloud-hypervisor, Firecracker, crosvm, or
 * QEMU's vhost-vsock), there is no channel to hot-plug and nothing to
 * relay here: the agent listens on a reserved vsock port the host named
 * (below 1024, so only root in this VM can bind it), takes one connection
 * from the host (CID 2; a process of this VM connecting over the loopback
 * is turned away) and hands that socket itself to the kernel.
 */
interface Relay {
  closed: boolean;
  /** End the streams. */
  close: () => void;
}

const HOST_CONNECT_MS = 10_000;

export interface UsbAgentOptions {
  log: Logger;
  /** Run `modprobe NAME` (the guest's own); default execFileSync('modprobe'). */
  modprobe?: (name: string) => void;
  /** The only peer a vsock stream is taken from; default the host (CID 2). A test over vsock_loopback passes 1. */
  usbipPeerCid?: number;
}

/** What a provider VM tells the host of one of its devices: the facts src/usb/devices.ts reads, as JSON. */
export type ProvidedDeviceJson = Omit<UsbHostDevice, 'major' | 'minor' | 'driver' | 'idSerialFrom'>;

export class UsbAgent {
  private readonly exports = new Map<string, Relay>();
  private readonly imports = new Map<number, Relay>();
  private readonly log: Logger;

  constructor(private readonly opts: UsbAgentOptions) {
    this.log = opts.log.child({ component: 'usbip' });
  }

  /** This VM's USB devices, for the host to offer to the others. */
  devices(): ProvidedDeviceJson[] {
    return listUsbDevices().map(({ major: _major, minor: _minor, driver: _driver, idSerialFrom: _from, ...d }) => d);
  }

  /** Hand BUSID to usbip-host on a stream to the host: relayed to a channel, or the host's vsock connection itself. */
  async export(busid: string, channel: UsbipChannel): Promise<{ devid: number; speed: number }> {
    const existing = this.exports.get(busid);
    if (existing && !existing.closed) throw new UsbipError('state', `${busid} is already exported`);
    this.exports.delete(busid);
    const device = exportableDevice(busid);
    let bound = false;
    const bind = () => {
      if (usbDriverOf(busid) === USBIP_HOST) return;
      this.withModule('usbip-host', () => bindToUsbipHost(busid));
      bound = true;
    };
    let link: Relay;
    try {
      link = await this.toKernel(channel, { busid }, bind, (fd) => exportOnSocket(busid, fd));
    } catch (err) {
      // The device goes back to its own driver: a failed export leaves it as it was.
      if (bound) {
        try {
          unbindFromUsbipHost(busid);
        } catch (e) {
          this.log.warn({ busid, err: (e as Error).message }, 'could not give the device back to its own driver');
        }
      }
      throw err;
    }
    this.exports.set(busid, link);
    this.log.info({ busid, ...channel, devid: device.devid, speed: device.speed }, 'exported a USB device to the host');
    return { devid: device.devid, speed: device.speed };
  }

  /** The device back to its own driver; the stream, if still up, ends. */
  unexport(busid: string): string {
    const r = this.exports.get(busid);
    this.exports.delete(busid);
    try {
      stopExport(busid);
    } catch (err) {
      // The link may have ended already (the importer went): usbip-host is idle then.
      this.log.debug({ busid, err: (err as Error).message }, 'no export to stop');
    }
    if (r) this.close(r);
    if (usbDriverOf(busid) === USBIP_HOST) unbindFromUsbipHost(busid);
    this.log.info({ busid }, 'USB device given back to its own driver');
    return 'unexported';
  }

  /** Attach the device the host sends on `channel` to vhci-hcd; answers the vhci port. */
  async import(channel: UsbipChannel, devid: number, speed: number): Promise<number> {
    let vhciPort = -1;
    const link = await this.toKernel(channel, { devid }, () => undefined, (fd) => {
      vhciPort = this.withModule('vhci-hcd', () => attachToVhci({ sockfd: fd, devid, speed })).port;
    });
    this.imports.set(vhciPort, link);
    this.log.info({ ...channel, vhciPort, devid, speed }, 'imported a USB device from the host');
    return vhciPort;
  }

  /**
   * A stream to the host, handed to the kernel by `hand(fd)` once `prepare`
   * ran: over a channel, one end of a socket pair whose other end is
   * relayed to it; over vsock, the host's own connection.
   */
  private async toKernel(channel: UsbipChannel, facts: Record<string, unknown>, prepare: () => void, hand: (fd: number) => void): Promise<Relay> {
    if ('vsockPort' in channel) {
      const server = await this.listenForHost(channel.vsockPort);
      let socket: VsockSocket;
      try {
        prepare();
        socket = await this.acceptHost(server, channel.vsockPort);
      } finally {
        void server.close();
      }
      try {
        hand(socket.fd);
      } finally {
        // The kernel holds its own reference now; Node never read from it.
        socket.destroy();
      }
      return { closed: false, close: () => undefined };
    }
    const port = await openPort(await findPort(channel.port, { timeoutMs: 10_000 }));
    try {
      prepare();
      const [kernel, ours] = await streamPair('unix');
      try {
        hand(socketFd(kernel));
      } catch (err) {
        ours.destroy();
        throw err;
      } finally {
        kernel.destroy();
      }
      return this.relay(port, ours, { ...facts, port: channel.port });
    } catch (err) {
      port.destroy();
      throw err;
    }
  }

  private async listenForHost(port: number): Promise<VsockServer> {
    const server = new VsockServer({ backlog: 4 });
    try {
      await server.listen(port);
    } catch (err) {
      const code = (err as { code?: string }).code;
      throw new Error(code === 'EADDRINUSE' ? `vsock port ${port} is in use in this VM` : code === 'EACCES' ? `vsock port ${port} is reserved and this agent is not root` : `cannot listen on vsock port ${port}: ${(err as Error).message}`);
    }
    return server;
  }

  /** The host's connection to `server`; any other peer's is closed and logged, and the wait goes on. */
  private acceptHost(server: VsockServer, port: number): Promise<VsockSocket> {
    const peer = this.opts.usbipPeerCid ?? VMADDR_CID_HOST;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`the host did not connect to vsock port ${port} within ${HOST_CONNECT_MS / 1000} s`)), HOST_CONNECT_MS);
      const done = (err: Error | undefined, socket?: VsockSocket) => {
        clearTimeout(timer);
        server.off('connection', onConnection);
        server.off('error', done);
        if (err) reject(err);
        else resolve(socket!);
      };
      const onConnection = (s: VsockSocket) => {
        if (s.remote.cid === peer) return done(undefined, s);
        this.log.warn({ vsockPort: port, peerCid: s.remote.cid }, 'turned away a connection to the USB/IP port that did not come from the host');
        s.destroy();
      };
      server.on('connection', onConnection);
      server.on('error', done);
    });
  }

  unimport(vhciPort: number): string {
    const r = this.imports.get(vhciPort);
    this.imports.delete(vhciPort);
    try {
      detachFromVhci(vhciPort);
    } catch (err) {
      if (!(err instanceof UsbipError && err.kind === 'state')) throw err;
    }
    if (r) this.close(r);
    return 'detached';
  }

  /**
   * The agent's line commands: `usb-devices`, `usb-export BUSID CHANNEL`,
   * `usb-unexport BUSID`, `usb-import CHANNEL DEVID SPEED`, `usb-unimport
   * VHCIPORT`; a CHANNEL is a virtio-serial port's name or `vsock:PORT`.
   */
  async command(line: string): Promise<string> {
    const [verb, ...args] = line.split(' ');
    const busid = (s: string | undefined) => {
      if (s === undefined || busIdProblem(s) !== undefined) throw new Error(`"${String(s).slice(0, 40)}" is not a USB bus id`);
      return s;
    };
    const channel = (s: string | undefined): UsbipChannel => {
      const vsock = /^vsock:([0-9]{1,4})$/.exec(s ?? '');
      if (vsock) {
        const vsockPort = Number(vsock[1]);
        if (vsockPort < 1 || vsockPort >= VSOCK_RESERVED_BELOW) throw new Error(`vsock port ${vsockPort} is not a reserved port (1 to ${VSOCK_RESERVED_BELOW - 1})`);
        return { vsockPort };
      }
      const why = s === undefined ? 'missing' : portNameProblem(s);
      if (why) throw new Error(`not a channel name: ${why}`);
      return { port: s! };
    };
    const int = (s: string | undefined, max: number) => {
      if (s === undefined || !/^[0-9]{1,10}$/.test(s) || Number(s) > max) throw new Error(`"${String(s).slice(0, 20)}" is not a number up to ${max}`);
      return Number(s);
    };
    switch (verb) {
      case 'usb-devices':
        return JSON.stringify(this.devices());
      case 'usb-export': {
        const r = await this.export(busid(args[0]), channel(args[1]));
        return `${r.devid} ${r.speed}`;
      }
      case 'usb-unexport':
        return this.unexport(busid(args[0]));
      case 'usb-import':
        return String(await this.import(channel(args[0]), int(args[1], 0xffffffff), int(args[2], 6)));
      case 'usb-unimport':
        return this.unimport(int(args[0], 1023));
      default:
        throw new Error('unknown command');
    }
  }

  private relay(port: Duplex, ours: net.Socket, facts: Record<string, unknown>): Relay {
    const r: Relay = { closed: false, close: () => undefined };
    r.close = relayBoth(port, ours, ['the channel', 'the kernel side'], (why) => {
      r.closed = true;
      this.log.info({ ...facts, why }, 'USB/IP stream ended');
    });
    return r;
  }

  private close(r: Relay): void {
    r.closed = true;
    r.close();
  }

  /** Run `op`; if the driver it needs is not loaded, load it once and run it again. */
  private withModule<T>(module: 'usbip-host' | 'vhci-hcd', op: () => T): T {
    try {
      return op();
    } catch (err) {
      if (!(err instanceof UsbipError && err.kind === 'not-loaded')) throw err;
      try {
        (this.opts.modprobe ?? ((name: string) => execFileSync('modprobe', [name], { stdio: 'ignore', timeout: 10_000 })))(module);
      } catch {
        throw err;
      }
      return op();
    }
  }
}
