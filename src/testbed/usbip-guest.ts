import { closeSync, openSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  attachToVhci,
  bindToUsbipHost,
  detachFromVhci,
  exportableDevice,
  exportOnSocket,
  stopExport,
  unbindFromUsbipHost,
  usbipHostStatus,
  vhciAttached,
  UsbipError,
  type ExportableDevice,
  type VhciPlace,
} from '../usb/usbip.js';
import { socketFd } from '../native/fds.js';
import { streamPair, type StreamKind } from '../usb/stream-pair.js';

/**
 * Runs inside a test guest as root, on the built module (dist/): usbip.ts's
 * operations one per run, each printing one JSON line, so a test can drive
 * both kernel sides of USB/IP in one guest. `loopback` is the one that
 * stands for the host daemon's relay: it connects a stream to itself and
 * hands one end to usbip-host and the other to vhci-hcd.
 *
 *   usbip-guest.js device BUSID | bind BUSID | unbind BUSID | status BUSID | stop BUSID
 *   usbip-guest.js loopback BUSID tcp|unix
 *   usbip-guest.js refusals BUSID        (each side handed a file that is no socket)
 *   usbip-guest.js detach PORT | attached
 */

export type { StreamKind };

export interface Loopback {
  device: ExportableDevice;
  place: VhciPlace;
  /** The fd numbers the kernel was given, closed here since. */
  fds: { exported: number; imported: number };
}

/**
 * One stream, its ends to usbip-host (exporting BUSID) and vhci-hcd. Each
 * socket is destroyed in the same tick as its hand-off: libuv reads only
 * between ticks, so Node never takes a byte of the URB stream, and closing
 * our fd leaves the connection to the reference the kernel took. The caller
 * may exit at once; the link stays up.
 */
export async function loopbackAttach(busid: string, kind: StreamKind): Promise<Loopback> {
  const device = exportableDevice(busid);
  const [exporting, importing] = await streamPair(kind);
  try {
    const fds = { exported: socketFd(exporting), imported: socketFd(importing) };
    exportOnSocket(busid, fds.exported);
    exporting.destroy();
    let place: VhciPlace;
    try {
      place = attachToVhci({ sockfd: fds.imported, devid: device.devid, speed: device.speed });
    } catch (err) {
      stopExport(busid);
      throw err;
    }
    importing.destroy();
    return { device, place, fds };
  } finally {
    exporting.destroy();
    importing.destroy();
  }
}

export interface Refusal {
  kind: string;
  errno: string | undefined;
  message: string;
}

/** What each kernel side answers when handed an fd that is no socket (/dev/null's): nothing may be taken. */
export function refusals(busid: string): { exporting: Refusal; importing: Refusal } {
  const device = exportableDevice(busid);
  const fd = openSync('/dev/null', 'r');
  const refusal = (op: () => void): Refusal => {
    try {
      op();
    } catch (err) {
      if (err instanceof UsbipError) return { kind: err.kind, errno: err.errno, message: err.message };
      throw err;
    }
    throw new Error(`the kernel took /dev/null's fd ${fd} as a socket`);
  };
  try {
    return {
      exporting: refusal(() => exportOnSocket(busid, fd)),
      importing: refusal(() => void attachToVhci({ sockfd: fd, devid: device.devid, speed: device.speed })),
    };
  } finally {
    closeSync(fd);
  }
}

async function main(): Promise<unknown> {
  const [verb, arg = '', kind = 'tcp'] = process.argv.slice(2);
  switch (verb) {
    case 'device':
      return exportableDevice(arg);
    case 'bind':
      bindToUsbipHost(arg);
      return { bound: arg };
    case 'unbind':
      unbindFromUsbipHost(arg);
      return { unbound: arg };
    case 'status':
      return { status: usbipHostStatus(arg) };
    case 'stop':
      stopExport(arg);
      return { stopped: arg };
    case 'loopback':
      if (kind !== 'tcp' && kind !== 'unix') throw new Error(`loopback: "${kind}" is neither tcp nor unix`);
      return loopbackAttach(arg, kind);
    case 'refusals':
      return refusals(arg);
    case 'detach':
      if (!/^[0-9]{1,5}$/.test(arg)) throw new Error(`detach: "${arg}" is not a port number`);
      detachFromVhci(Number(arg));
      return { detached: Number(arg) };
    case 'attached':
      return vhciAttached();
    default:
      throw new Error(`usage: usbip-guest.js device|bind|unbind|status|stop|refusals BUSID, loopback BUSID tcp|unix, detach PORT, attached (not "${verb}")`);
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (out) => console.log(JSON.stringify(out)),
    (err: Error) => {
      console.error(`usbip-guest: ${err.message}`);
      process.exitCode = 1;
    },
  );
}
