import { closeSync, constants, existsSync, openSync, readdirSync, readlinkSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { busIdProblem } from '../helper/commands.js';

/**
 * The kernel's USB/IP, through its sysfs files only: no usbip tools, no
 * usbipd, no OP_REQ_IMPORT handshake. Both ends are ours, so what that
 * handshake carries (the device's devid and speed) travels in our own
 * protocol, and each kernel side is handed one end of a connected stream:
 *
 * - the exporting side (the host through the privileged helper, or a
 *   sys-usb VM's root agent) binds the device to `usbip-host` the way
 *   `usbip bind` does, and writes a socket's fd number to the device's
 *   `usbip_sockfd` (drivers/usb/usbip/stub_dev.c);
 * - the importing VM's root agent writes `PORT SOCKFD DEVID SPEED` to
 *   vhci-hcd's `attach` (drivers/usb/usbip/vhci_sysfs.c), on a free port of
 *   the root hub that matches the speed.
 *
 * The fd is a number in the writing process's own table: the write must come
 * from the process that holds the socket. Both stores call sockfd_lookup(),
 * which takes a reference on the socket's file, and the kernel's rx/tx
 * threads use that reference from then on; the kernel drops it (after a
 * shutdown of the socket) when the link ends: `-1` to usbip_sockfd, a write
 * to `detach`, or the peer going away. So the writer may close its fd as
 * soon as the write has returned, and should: a process that keeps the fd
 * open must not read from or write to it, or it steals the URB stream. Both
 * stores take only SOCK_STREAM sockets; TCP and AF_UNIX stream sockets both do.
 *
 * Everything read here is checked before use: the host reads these files
 * from a guest's kernel too (a sys-usb VM's), so a status line is parsed to
 * the letter, numbers are bounded, and reads are capped at a sysfs page.
 * Only the standard library of Node 18 is used: this runs in guests too.
 */

export interface UsbipOptions {
  /** The sysfs mount; default /sys. */
  sysfs?: string;
  /** The USB bus; default <sysfs>/bus/usb (the privileged helper is given its own). */
  usbBus?: string;
}

export type UsbipErrorKind =
  /** usbip-host or vhci-hcd is not loaded. */
  | 'not-loaded'
  /** No such device, or no such vhci port. */
  | 'not-found'
  /** The device is not in the state the operation needs (already bound, not bound, in use, not in use). */
  | 'state'
  /** Every port of the matching hub is taken. */
  | 'no-free-port'
  /** A write was refused by the kernel; `errno` says how. */
  | 'kernel'
  /** A file did not read as the kernel writes it. */
  | 'malformed';

export class UsbipError extends Error {
  constructor(
    readonly kind: UsbipErrorKind,
    message: string,
    /** The write's error code (EINVAL, EBUSY, …), for kind "kernel". */
    readonly errno?: string,
  ) {
    super(message);
    this.name = 'UsbipError';
  }
}

/** include/uapi/linux/usbip.h, enum usbip_device_status. */
export const USBIP_STATUS = {
  SDEV_ST_AVAILABLE: 1,
  SDEV_ST_USED: 2,
  SDEV_ST_ERROR: 3,
  VDEV_ST_NULL: 4,
  VDEV_ST_NOTASSIGNED: 5,
  VDEV_ST_USED: 6,
  VDEV_ST_ERROR: 7,
} as const;

/** include/uapi/linux/usb/ch9.h, enum usb_device_speed: what vhci-hcd's attach takes as SPEED. */
export const USB_SPEED = { LOW: 1, FULL: 2, HIGH: 3, WIRELESS: 4, SUPER: 5, SUPER_PLUS: 6 } as const;

const SPEED_NUMBERS: readonly number[] = Object.values(USB_SPEED);

/** sysfs `speed` (drivers/usb/core/sysfs.c speed_show) to usb_device_speed. "unknown" has no number vhci-hcd takes. */
const SPEEDS: Readonly<Record<string, number>> = {
  '1.5': USB_SPEED.LOW,
  '12': USB_SPEED.FULL,
  '480': USB_SPEED.HIGH,
  '53.3-480': USB_SPEED.WIRELESS,
  '5000': USB_SPEED.SUPER,
  '10000': USB_SPEED.SUPER_PLUS,
  '20000': USB_SPEED.SUPER_PLUS,
};

export const USBIP_HOST = 'usbip-host';

/** The usb_device_speed vhci-hcd's attach takes for a device whose sysfs `speed` reads `text`; undefined for "unknown" and the like. */
export function usbSpeedOf(text: string | undefined): number | undefined {
  const t = text?.replace(/\n$/, '');
  return t !== undefined && Object.hasOwn(SPEEDS, t) ? SPEEDS[t] : undefined;
}

/**
 * Where the host's end of a VM's USB/IP stream is, as the host names it to
 * the VM's root agent: a virtio-serial port it hot-plugged (QEMU), or a
 * vsock port the agent listens on for the host's connection (any VMM with
 * vsock). The vsock port is a reserved one, below 1024, which only root in
 * the VM can bind.
 */
export type UsbipChannel = { port: string } | { vsockPort: number };
export const VSOCK_RESERVED_BELOW = 1024;

/** One sysfs page; an attribute never holds more. */
const MAX_ATTR_BYTES = 4096;
/** USB addresses are 7 bits; usbcore numbers devices 1 to 127 on each bus. */
const MAX_DEVNUM = 127;
/** devid is (busnum << 16) | devnum in a u32. */
const MAX_BUSNUM = 0xffff;

const sysfsOf = (opts: UsbipOptions) => opts.sysfs ?? '/sys';
const usbBusOf = (opts: UsbipOptions) => opts.usbBus ?? path.join(sysfsOf(opts), 'bus', 'usb');
const deviceDir = (busid: string, opts: UsbipOptions) => path.join(usbBusOf(opts), 'devices', busid);
const hostDriverDir = (opts: UsbipOptions) => path.join(usbBusOf(opts), 'drivers', USBIP_HOST);

/** The whole attribute, or undefined when it cannot be opened; longer than a page is malformed. */
function readAttribute(file: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return undefined;
  }
  try {
    const buf = Buffer.alloc(MAX_ATTR_BYTES + 1);
    let n = 0;
    for (let got = -1; got !== 0 && n < buf.length; n += got) got = readSync(fd, buf, n, buf.length - n, null);
    if (n > MAX_ATTR_BYTES) throw new UsbipError('malformed', `${file} holds more than ${MAX_ATTR_BYTES} bytes, more than sysfs ever gives`);
    return buf.subarray(0, n).toString('latin1');
  } catch (err) {
    if (err instanceof UsbipError) throw err;
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** A decimal attribute within [min, max], as the kernel prints it ("%d\n"); undefined if absent. */
function numberAttribute(file: string, min: number, max: number): number | undefined {
  const text = readAttribute(file);
  if (text === undefined) return undefined;
  const m = /^(0|-?[1-9][0-9]{0,9})\n?$/.exec(text);
  const n = m ? Number(m[1]) : NaN;
  if (!(n >= min && n <= max)) throw new UsbipError('malformed', `${file} reads ${JSON.stringify(text.slice(0, 40))}, not a number from ${min} to ${max}`);
  return n;
}

/**
 * One write of `value`, as one store call: opened without O_CREAT, so a
 * missing attribute is an error and never a new file. The kernel's refusal
 * comes back as the write's errno.
 */
function writeAttribute(file: string, value: string): void {
  let fd: number;
  try {
    fd = openSync(file, constants.O_WRONLY | constants.O_TRUNC);
  } catch (err) {
    throw new UsbipError('kernel', `writing "${value}" to ${file}: ${(err as Error).message}`, (err as NodeJS.ErrnoException).code);
  }
  try {
    const bytes = Buffer.from(value, 'latin1');
    const n = writeSync(fd, bytes);
    if (n !== bytes.length) throw Object.assign(new Error(`short write: ${n} of ${bytes.length} bytes`), { code: 'EIO' });
  } catch (err) {
    throw new UsbipError('kernel', `writing "${value}" to ${file}: ${(err as Error).message}`, (err as NodeJS.ErrnoException).code);
  } finally {
    closeSync(fd);
  }
}

function checkBusId(busid: string): void {
  const problem = busIdProblem(busid);
  if (problem) throw new UsbipError('not-found', `"${busid.slice(0, 40)}" is not a USB bus id: ${problem}`);
}

function existingDevice(busid: string, opts: UsbipOptions): string {
  checkBusId(busid);
  const dir = deviceDir(busid, opts);
  if (!existsSync(dir)) throw new UsbipError('not-found', `no USB device ${busid} (no ${dir})`);
  return dir;
}

/** The name of the driver bound to the USB device itself (usb, usbip-host), or undefined. */
export function usbDriverOf(busid: string, opts: UsbipOptions = {}): string | undefined {
  checkBusId(busid);
  try {
    return path.basename(readlinkSync(path.join(deviceDir(busid, opts), 'driver')));
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// The exporting side: usbip-host

export interface ExportableDevice {
  busid: string;
  busnum: number;
  devnum: number;
  /** (busnum << 16) | devnum: how the importing side names the device in its URBs (stub_dev.c). */
  devid: number;
  /** usb_device_speed, for vhci-hcd's attach. */
  speed: number;
}

/** What the importing side needs to know about a device, read from its sysfs directory. */
export function exportableDevice(busid: string, opts: UsbipOptions = {}): ExportableDevice {
  const dir = existingDevice(busid, opts);
  const need = (name: string, max: number) => {
    const n = numberAttribute(path.join(dir, name), 1, max);
    if (n === undefined) throw new UsbipError('not-found', `${dir}/${name} is missing: the device is going away`);
    return n;
  };
  const busnum = need('busnum', MAX_BUSNUM);
  const devnum = need('devnum', MAX_DEVNUM);
  const speedText = readAttribute(path.join(dir, 'speed'));
  if (speedText === undefined) throw new UsbipError('not-found', `${dir}/speed is missing: the device is going away`);
  const speed = usbSpeedOf(speedText);
  if (speed === undefined) throw new UsbipError('malformed', `${dir}/speed reads ${JSON.stringify(speedText.slice(0, 40))}, not a speed vhci-hcd can attach`);
  return { busid, busnum, devnum, devid: ((busnum << 16) | devnum) >>> 0, speed };
}

/**
 * `usbip bind`'s sequence (tools/usb/usbip/src/usbip_bind.c): the device off
 * its current driver, its bus id into usbip-host's match table, then bound
 * to usbip-host. Whether the caller may do this is the caller's to decide.
 */
export function bindToUsbipHost(busid: string, opts: UsbipOptions = {}): void {
  const dir = existingDevice(busid, opts);
  const host = hostDriverDir(opts);
  const current = usbDriverOf(busid, opts);
  if (current === USBIP_HOST) throw new UsbipError('state', `${busid} is already bound to ${USBIP_HOST}`);
  if (!existsSync(host)) throw new UsbipError('not-loaded', `the ${USBIP_HOST} driver is not loaded: run "modprobe ${USBIP_HOST}" as root, or list it in /etc/modules-load.d/`);
  if (current !== undefined) writeAttribute(path.join(dir, 'driver', 'unbind'), busid);
  writeAttribute(path.join(host, 'match_busid'), `add ${busid}`);
  writeAttribute(path.join(host, 'bind'), busid);
}

/** Throws unless usbip-host is the device's driver. */
export function checkBoundToUsbipHost(busid: string, opts: UsbipOptions = {}): void {
  existingDevice(busid, opts);
  if (usbDriverOf(busid, opts) !== USBIP_HOST) throw new UsbipError('state', `${busid} is not bound to ${USBIP_HOST}`);
}

/**
 * `usbip unbind`'s sequence (usbip_unbind.c), which gives the device back to
 * its own driver: off usbip-host, out of the match table, and probed again.
 * usbip-host's `rebind` (since Linux 4.19) probes it while keeping
 * usbip-host from claiming it back; an older kernel gets the bus's
 * `drivers_probe`. An open link is shut down by the kernel on unbind.
 */
export function unbindFromUsbipHost(busid: string, opts: UsbipOptions = {}): void {
  checkBoundToUsbipHost(busid, opts);
  const host = hostDriverDir(opts);
  writeAttribute(path.join(host, 'unbind'), busid);
  writeAttribute(path.join(host, 'match_busid'), `del ${busid}`);
  const rebind = path.join(host, 'rebind');
  writeAttribute(existsSync(rebind) ? rebind : path.join(usbBusOf(opts), 'drivers_probe'), busid);
}

export type UsbipHostStatus = 'available' | 'used' | 'error';

/** usbip-host's state of a bound device (`usbip_status`): available for a link, carrying one, or broken. */
export function usbipHostStatus(busid: string, opts: UsbipOptions = {}): UsbipHostStatus {
  const dir = existingDevice(busid, opts);
  const file = path.join(dir, 'usbip_status');
  const n = numberAttribute(file, USBIP_STATUS.SDEV_ST_AVAILABLE, USBIP_STATUS.SDEV_ST_ERROR);
  if (n === undefined) throw new UsbipError('state', `${busid} is not bound to ${USBIP_HOST} (no ${file})`);
  return n === USBIP_STATUS.SDEV_ST_AVAILABLE ? 'available' : n === USBIP_STATUS.SDEV_ST_USED ? 'used' : 'error';
}

/**
 * Hands usbip-host the exporting end of a connected stream socket, by its
 * fd number in this process. From here the kernel serves the device's URBs
 * on it; see the module comment for what happens to the fd.
 */
export function exportOnSocket(busid: string, sockfd: number, opts: UsbipOptions = {}): void {
  if (!Number.isSafeInteger(sockfd) || sockfd < 0 || sockfd > 0x7fffffff) throw new UsbipError('not-found', `${sockfd} is not a file descriptor`);
  const status = usbipHostStatus(busid, opts);
  if (status !== 'available') {
    throw new UsbipError('state', status === 'used' ? `${busid} is already exported on a connection: stop that one first` : `${busid} is in usbip-host's error state: unbind it and bind it again`);
  }
  const file = path.join(deviceDir(busid, opts), 'usbip_sockfd');
  try {
    writeAttribute(file, String(sockfd));
  } catch (err) {
    throw refusal(err, `usbip-host did not take fd ${sockfd} for ${busid}`, { EINVAL: 'not a stream socket of this process, or the device stopped being available' });
  }
}

/** Ends the device's link from the exporting side: the kernel shuts the socket down, and the importing side sees its device unplugged. */
export function stopExport(busid: string, opts: UsbipOptions = {}): void {
  if (usbipHostStatus(busid, opts) !== 'used') throw new UsbipError('state', `${busid} is not exported on a connection`);
  try {
    writeAttribute(path.join(deviceDir(busid, opts), 'usbip_sockfd'), '-1');
  } catch (err) {
    throw refusal(err, `usbip-host did not stop ${busid}`, { EINVAL: 'its link had already ended' });
  }
}

/** A kernel refusal in words: what was refused, the errno, and what that errno means for this store. */
function refusal(err: unknown, what: string, meanings: Readonly<Record<string, string>>): unknown {
  if (!(err instanceof UsbipError) || err.kind !== 'kernel' || err.errno === undefined) return err;
  const meaning = meanings[err.errno];
  return new UsbipError('kernel', `${what}: the kernel answered ${err.errno}${meaning ? ` (${meaning})` : ''}; ${err.message}`, err.errno);
}

// ---------------------------------------------------------------------------
// The importing side: vhci-hcd

export type VhciHub = 'hs' | 'ss';
export type VhciPortState = 'free' | 'not-assigned' | 'used' | 'error';

export interface VhciPort {
  /** Which vhci_hcd.N the port belongs to (its status file: status, status.1, …). */
  controller: number;
  /** The root hub: high speed (and slower) or SuperSpeed. */
  hub: VhciHub;
  /** The number attach and detach take. */
  port: number;
  state: VhciPortState;
  /** usb_device_speed of the attached device; 0 when free. */
  speed: number;
  devid: number;
  /** The attaching process's fd number at attach time: informative only. */
  sockfd: number;
  /** The imported device's bus id on this side, once enumerated (state "used"). */
  localBusid: string | undefined;
}

const STATES: Readonly<Record<number, VhciPortState>> = {
  [USBIP_STATUS.VDEV_ST_NULL]: 'free',
  [USBIP_STATUS.VDEV_ST_NOTASSIGNED]: 'not-assigned',
  [USBIP_STATUS.VDEV_ST_USED]: 'used',
  [USBIP_STATUS.VDEV_ST_ERROR]: 'error',
};

const STATUS_HEADER = ['hub', 'port', 'sta', 'spd', 'dev', 'sockfd', 'local_busid'];
/**
 * vhci_sysfs.c port_show_vhci(): "%s  %04u %03u " then "%03u %08x %06u %s"
 * for a port in use, or zeros and "0-0" for a free one. A controller that
 * is not ready prints 16 zeros for the socket.
 */
const STATUS_LINE = /^(hs|ss) {2}([0-9]{4,5}) ([0-9]{3}) ([0-9]{3}) ([0-9a-f]{8}) ([0-9]{6,10}|0{16}) (\S{3,32})$/;

/**
 * One controller's status file, to the letter: the header, then its hs
 * ports and its ss ports, numbered from controller × ports-per-controller
 * as the kernel numbers them. Anything else is malformed.
 */
export function parseVhciStatus(text: string, controller: number, file = `status${controller ? `.${controller}` : ''}`): VhciPort[] {
  const bad = (why: string) => new UsbipError('malformed', `vhci-hcd's ${file} is not what the kernel writes: ${why}`);
  const lines = text.split('\n');
  if (lines.pop() !== '') throw bad('it does not end with a newline');
  const header = lines.shift();
  if (header === undefined || header.trim().split(/\s+/).join(' ') !== STATUS_HEADER.join(' ')) throw bad(`the header is ${JSON.stringify(header?.slice(0, 80))}`);
  if (lines.length === 0 || lines.length % 2 !== 0) throw bad(`${lines.length} port lines, not an even number above 0`);
  const perHub = lines.length / 2;
  return lines.map((line, i) => {
    const m = STATUS_LINE.exec(line);
    if (!m) throw bad(`line ${i + 2} is ${JSON.stringify(line.slice(0, 80))}`);
    const [, hub, port, sta, spd, dev, sockfd, busid] = m as unknown as [string, VhciHub, string, string, string, string, string, string];
    const expectHub: VhciHub = i < perHub ? 'hs' : 'ss';
    const expectPort = controller * lines.length + i;
    if (hub !== expectHub || Number(port) !== expectPort) throw bad(`line ${i + 2} is ${hub} port ${Number(port)} where the kernel puts ${expectHub} port ${expectPort}`);
    const state = STATES[Number(sta)];
    if (!state) throw bad(`port ${expectPort} has status ${Number(sta)}, not one of vhci-hcd's`);
    const speed = Number(spd);
    if (speed > USB_SPEED.SUPER_PLUS) throw bad(`port ${expectPort} has speed ${speed}`);
    const localBusid = busid === '0-0' ? undefined : busid;
    if (localBusid !== undefined && busIdProblem(localBusid)) throw bad(`port ${expectPort} names device ${JSON.stringify(busid)}`);
    if (state === 'used' ? localBusid === undefined : localBusid !== undefined) throw bad(`port ${expectPort} is ${state} and names ${busid}`);
    return { controller, hub, port: expectPort, state, speed, devid: parseInt(dev, 16), sockfd: Number(sockfd), localBusid };
  });
}

/** vhci_hcd.0: the one platform device whose sysfs holds every controller's files. */
export function vhciDir(opts: UsbipOptions = {}): string {
  return path.join(sysfsOf(opts), 'devices', 'platform', 'vhci_hcd.0');
}

function loadedVhci(opts: UsbipOptions): string {
  const dir = vhciDir(opts);
  if (!existsSync(dir)) throw new UsbipError('not-loaded', `the vhci-hcd driver is not loaded (no ${dir}): run "modprobe vhci-hcd" as root, or list it in /etc/modules-load.d/`);
  return dir;
}

/** Every port of every vhci-hcd controller, in port order, checked against `nports`. */
export function vhciPorts(opts: UsbipOptions = {}): VhciPort[] {
  const dir = loadedVhci(opts);
  const nports = numberAttribute(path.join(dir, 'nports'), 2, 0xffff);
  if (nports === undefined) throw new UsbipError('malformed', `${dir} has no nports`);
  const files = readdirSync(dir).filter((f) => /^status(\.[1-9][0-9]{0,3})?$/.test(f));
  const ports: VhciPort[] = [];
  for (let c = 0; c < files.length; c++) {
    const file = c === 0 ? 'status' : `status.${c}`;
    const text = readAttribute(path.join(dir, file));
    if (text === undefined) throw new UsbipError('malformed', `${dir} has ${files.length} status files but no ${file}`);
    ports.push(...parseVhciStatus(text, c, file));
  }
  if (ports.length !== nports) throw new UsbipError('malformed', `${dir}/nports says ${nports} ports, its status files list ${ports.length}`);
  return ports;
}

/** The ports that carry a device (or are setting one up). */
export function vhciAttached(opts: UsbipOptions = {}): VhciPort[] {
  return vhciPorts(opts).filter((p) => p.state !== 'free');
}

/** A SuperSpeed device goes on the ss hub, every slower one on the hs hub (vhci_sysfs.c attach_store picks the hub by speed). */
export function hubFor(speed: number): VhciHub {
  return speed >= USB_SPEED.SUPER ? 'ss' : 'hs';
}

/** The first free port of the hub `speed` needs. */
export function chooseVhciPort(ports: readonly VhciPort[], speed: number): VhciPort {
  const hub = hubFor(speed);
  const onHub = ports.filter((p) => p.hub === hub);
  const free = onHub.find((p) => p.state === 'free');
  if (!free) {
    throw new UsbipError('no-free-port', `no free port on vhci-hcd's ${hub === 'ss' ? 'SuperSpeed' : 'high-speed'} hub: all ${onHub.length} are in use; detach a device first`);
  }
  return free;
}

export interface VhciAttachRequest {
  /** The importing end of the connected stream, as an fd number in this process. */
  sockfd: number;
  /** From the exporting side (exportableDevice()). */
  devid: number;
  speed: number;
}

/** How often attach moves on to the next free port when another attacher took the one it chose (EBUSY). */
const ATTACH_TRIES = 4;

/** Where attach put a device; `port` is what detach takes. */
export type VhciPlace = Pick<VhciPort, 'controller' | 'hub' | 'port'>;

/**
 * Attaches the device to a free port of the matching hub. The kernel starts
 * enumerating at once: the port reads "not-assigned" until the device has
 * an address, then "used", with the device's local bus id.
 */
export function attachToVhci(req: VhciAttachRequest, opts: UsbipOptions = {}): VhciPlace {
  const { sockfd, devid, speed } = req;
  if (!Number.isSafeInteger(sockfd) || sockfd < 0 || sockfd > 0x7fffffff) throw new UsbipError('not-found', `${sockfd} is not a file descriptor`);
  if (!Number.isSafeInteger(devid) || devid < 0 || devid > 0xffffffff) throw new UsbipError('malformed', `devid ${devid} is not a 32-bit number`);
  if (!SPEED_NUMBERS.includes(speed)) throw new UsbipError('malformed', `speed ${speed} is not one vhci-hcd takes (${SPEED_NUMBERS.join(', ')})`);
  const file = path.join(loadedVhci(opts), 'attach');
  for (let attempt = 1; ; attempt++) {
    const port = chooseVhciPort(vhciPorts(opts), speed);
    try {
      writeAttribute(file, `${port.port} ${sockfd} ${devid} ${speed}`);
      return { controller: port.controller, hub: port.hub, port: port.port };
    } catch (err) {
      if (err instanceof UsbipError && err.errno === 'EBUSY' && attempt < ATTACH_TRIES) continue;
      throw refusal(err, `vhci-hcd did not attach fd ${sockfd} on port ${port.port}`, {
        EINVAL: 'not a stream socket of this process',
        EBUSY: 'the port was taken meanwhile',
        EAGAIN: 'the controller is not ready',
      });
    }
  }
}

/** Detaches whatever is on `port`: the kernel unplugs the device and shuts the socket down, so the exporting side sees the link end. */
export function detachFromVhci(port: number, opts: UsbipOptions = {}): void {
  const ports = vhciPorts(opts);
  const found = ports.find((p) => p.port === port);
  if (!found) throw new UsbipError('not-found', `vhci-hcd has no port ${port} (ports 0 to ${ports.length - 1})`);
  if (found.state === 'free') throw new UsbipError('state', `vhci-hcd port ${port} has nothing attached`);
  try {
    writeAttribute(path.join(vhciDir(opts), 'detach'), String(port));
  } catch (err) {
    throw refusal(err, `vhci-hcd did not detach port ${port}`, { EINVAL: 'nothing is attached there any more' });
  }
}
