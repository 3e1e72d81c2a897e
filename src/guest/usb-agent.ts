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
} from '../usb/usbip.js';
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
 */
interface Relay {
  port: Duplex;
  ours: net.Socket;
  closed: boolean;
  /** End both streams. */
  close: () => void;
}

export interface UsbAgentOptions {
  log: Logger;
  /** Run `modprobe NAME` (the guest's own); default execFileSync('modprobe'). */
  modprobe?: (name: string) => void;
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

  /** Hand BUSID to usbip-host on a stream relayed to channel PORTNAME. */
  async export(busid: string, portName: string): Promise<{ devid: number; speed: number }> {
    const existing = this.exports.get(busid);
    if (existing && !existing.closed) throw new UsbipError('state', `${busid} is already exported`);
    this.exports.delete(busid);
    const device = exportableDevice(busid);
    const port = await openPort(await findPort(portName, { timeoutMs: 10_000 }));
    try {
      if (usbDriverOf(busid) !== USBIP_HOST) this.withModule('usbip-host', () => bindToUsbipHost(busid));
      const [kernel, ours] = await streamPair('unix');
      try {
        exportOnSocket(busid, socketFd(kernel));
      } catch (err) {
        ours.destroy();
        throw err;
      } finally {
        kernel.destroy();
      }
      this.exports.set(busid, this.relay(port, ours, { busid, portName }));
    } catch (err) {
      port.destroy();
      throw err;
    }
    this.log.info({ busid, port: portName, devid: device.devid, speed: device.speed }, 'exported a USB device to the host');
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

  /** Attach the device the host relays on channel PORTNAME to vhci-hcd; answers the vhci port. */
  async import(portName: string, devid: number, speed: number): Promise<number> {
    const port = await openPort(await findPort(portName, { timeoutMs: 10_000 }));
    try {
      const [kernel, ours] = await streamPair('unix');
      let vhciPort: number;
      try {
        vhciPort = this.withModule('vhci-hcd', () => attachToVhci({ sockfd: socketFd(kernel), devid, speed })).port;
      } catch (err) {
        ours.destroy();
        throw err;
      } finally {
        kernel.destroy();
      }
      this.imports.set(vhciPort, this.relay(port, ours, { vhciPort, portName }));
      this.log.info({ port: portName, vhciPort, devid, speed }, 'imported a USB device from the host');
      return vhciPort;
    } catch (err) {
      port.destroy();
      throw err;
    }
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

  /** The agent's line commands: `usb-devices`, `usb-export BUSID PORT`, `usb-unexport BUSID`, `usb-import PORT DEVID SPEED`, `usb-unimport VHCIPORT`. */
  async command(line: string): Promise<string> {
    const [verb, ...args] = line.split(' ');
    const busid = (s: string | undefined) => {
      if (s === undefined || busIdProblem(s) !== undefined) throw new Error(`"${String(s).slice(0, 40)}" is not a USB bus id`);
      return s;
    };
    const portName = (s: string | undefined) => {
      const why = s === undefined ? 'missing' : portNameProblem(s);
      if (why) throw new Error(`not a channel name: ${why}`);
      return s!;
    };
    const int = (s: string | undefined, max: number) => {
      if (s === undefined || !/^[0-9]{1,10}$/.test(s) || Number(s) > max) throw new Error(`"${String(s).slice(0, 20)}" is not a number up to ${max}`);
      return Number(s);
    };
    switch (verb) {
      case 'usb-devices':
        return JSON.stringify(this.devices());
      case 'usb-export': {
        const r = await this.export(busid(args[0]), portName(args[1]));
        return `${r.devid} ${r.speed}`;
      }
      case 'usb-unexport':
        return this.unexport(busid(args[0]));
      case 'usb-import':
        return String(await this.import(portName(args[0]), int(args[1], 0xffffffff), int(args[2], 6)));
      case 'usb-unimport':
        return this.unimport(int(args[0], 1023));
      default:
        throw new Error('unknown command');
    }
  }

  private relay(port: Duplex, ours: net.Socket, facts: Record<string, unknown>): Relay {
    const r: Relay = { port, ours, closed: false, close: () => undefined };
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
