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
  usbDriverOf,
  USBIP_HOST,
  usbipHostStatus,
  vhciAttached,
  UsbipError,
  type ExportableDevice,
  type VhciPlace,
} from '../usb/usbip.js';
import { socketFd } from '../native/fds.js';
import { dialWhileAsked, streamPair, type StreamKind } from '../usb/stream-pair.js';
import { mkdirSync, writeFileSync } from 'node:fs';
import { UsbAgent } from '../guest/usb-agent.js';
import { parseCommand } from '../helper/commands.js';
import { DEFAULT_PATHS, execute, type HelperPaths } from '../helper/operations.js';
import { rootLogger } from '../log.js';
import { connectVsock, VMADDR_CID_LOCAL } from '../transport/af-vsock.js';

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
 *   usbip-guest.js agent-vsock BUSID import|export VSOCKPORT [stranger]
 *   usbip-guest.js helper usb-bind|usb-export|usb-unbind BUSID
 *
 * `agent-vsock` runs the root agent's USB/IP (src/guest/usb-agent.ts) over a
 * real AF_VSOCK stream, this process dialling it over vsock_loopback as the
 * host would over the VM's vsock: `import` has the agent hand the accepted
 * connection to vhci-hcd while this side hands its own end to usbip-host;
 * `export` the other way round. The agent takes only the host's peer CID,
 * which a loopback peer is not, so it is told to take CID 1 here; with
 * `stranger` it is not, and must turn this process away.
 *
 * `helper` runs the privileged helper's operations (src/helper/operations.ts)
 * on this kernel, as root asking for itself, with an allow list that gives
 * root mass storage: the host kernel as USB/IP's exporting side. The stream
 * `usb-export` hands back is attached to this guest's vhci-hcd, as a VM's
 * agent would attach the daemon's relay of it.
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

export interface AgentVsock {
  device: ExportableDevice;
  /** The vhci port the device is on, in this guest. */
  vhciPort: number;
}

/** One side of USB/IP is the agent's, on vsock port `port`; the other is this process's end of the agent's connection. */
export async function agentOverVsock(busid: string, direction: 'import' | 'export', port: number, stranger: boolean): Promise<AgentVsock | { refused: string; turnedAway: boolean }> {
  const device = exportableDevice(busid);
  const agent = new UsbAgent({ log: rootLogger(), ...(stranger ? {} : { usbipPeerCid: VMADDR_CID_LOCAL }) });
  if (direction === 'import' && usbDriverOf(busid) !== USBIP_HOST) bindToUsbipHost(busid);
  const asked = direction === 'import' ? agent.import({ vsockPort: port }, device.devid, device.speed) : agent.export(busid, { vsockPort: port }).then(() => -1);
  // Over the loopback, as the host would over the VM's vsock, until the agent listens.
  const ours = await dialWhileAsked(() => connectVsock(VMADDR_CID_LOCAL, port, { timeoutMs: 2000 }), asked, `the agent's vsock port ${port}`, { timeoutMs: 15_000, retryMs: 50 });
  if (stranger) {
    const closed = new Promise<boolean>((resolve) => ours.once('close', () => resolve(true)).once('end', () => resolve(true)).resume());
    const refused = await asked.then(
      () => '',
      (err: Error) => err.message,
    );
    const turnedAway = await Promise.race([closed, new Promise<boolean>((r) => setTimeout(() => r(false), 1000))]);
    ours.destroy();
    return { refused, turnedAway };
  }
  let vhciPort: number;
  try {
    if (direction === 'import') {
      exportOnSocket(busid, ours.fd);
      vhciPort = await asked;
    } else {
      vhciPort = attachToVhci({ sockfd: ours.fd, devid: device.devid, speed: device.speed }).port;
      await asked;
    }
  } finally {
    // Node never read from it; the kernel keeps its own reference.
    ours.destroy();
  }
  return { device, vhciPort };
}

/** The helper's files in this guest: its allow list (root's, 0644, in a root-owned folder) and its records. */
function helperPaths(): HelperPaths {
  const dir = '/run/xdpvm-helper-test';
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const allowList = path.join(dir, 'helper.conf');
  writeFileSync(allowList, 'usb root class:08\n', { mode: 0o644 });
  return { ...DEFAULT_PATHS, allowList, stateDir: path.join(dir, 'state') };
}

/** One helper command as root; usb-export's stream goes to vhci-hcd here. */
export async function helperCommand(name: string, busid: string): Promise<{ rule: string; place?: VhciPlace }> {
  const outcome = await execute(parseCommand([name, busid]), { uid: 0, user: 'root', groups: ['root'] }, helperPaths());
  if (!outcome.stream) return { rule: outcome.rule };
  try {
    const device = exportableDevice(busid);
    return { rule: outcome.rule, place: attachToVhci({ sockfd: socketFd(outcome.stream), devid: device.devid, speed: device.speed }) };
  } finally {
    outcome.stream.destroy();
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
    case 'helper':
      return helperCommand(arg, kind);
    case 'agent-vsock': {
      const [, , direction, port, stranger] = process.argv.slice(2);
      if (direction !== 'import' && direction !== 'export') throw new Error(`agent-vsock: "${direction}" is neither import nor export`);
      if (!/^[0-9]{1,4}$/.test(port ?? '')) throw new Error(`agent-vsock: "${port}" is not a vsock port`);
      return agentOverVsock(arg, direction, Number(port), stranger === 'stranger');
    }
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
