import { closeSync, constants, existsSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { requireProgram } from '../deps.js';
import { ExecError, runProgram } from '../exec.js';
import { openTap } from '../native/fds.js';
import type net from 'node:net';
import { bindToUsbipHost, checkBoundToUsbipHost, exportOnSocket, unbindFromUsbipHost, UsbipError, USBIP_HOST } from '../usb/usbip.js';
import { socketFd } from '../native/fds.js';
import { streamPair } from '../usb/stream-pair.js';
import { ipv4Range, ipv4Text, readAllowList, type AllowList } from './allow-list.js';
import { HelperError, MAX_TAP_NUMBER, printable, TAP_PREFIX, tapNameProblem, type Command } from './commands.js';
import { decideBridge, decideUsb, decideVmOnly, describeCaller, describeDevice, type Caller, type Decision, type UsbDevice } from './decide.js';

/**
 * The operations, each after its decision. Where the system is read from is a
 * parameter, so the tests can put the helper in a private network namespace
 * and point the USB commands at a fake sysfs.
 */
export interface HelperPaths {
  allowList: string;
  /** /sys/class/net of the namespace the helper runs in. */
  netSysfs: string;
  /** /sys/bus/usb. */
  usbSysfs: string;
  /** /dev/bus/usb. */
  devUsb: string;
  /** Which uid bound which device to usbip-host: /run/xdp-vm-helper (systemd's RuntimeDirectory). */
  stateDir: string;
}

export const DEFAULT_PATHS: HelperPaths = {
  allowList: '/etc/xdp-vm/helper.conf',
  netSysfs: '/sys/class/net',
  usbSysfs: '/sys/bus/usb',
  devUsb: '/dev/bus/usb',
  stateDir: '/run/xdp-vm-helper',
};

export const MAX_TAPS_PER_USER = 32;

export interface Outcome {
  /** The rule that allowed it, or why undoing needs none. */
  rule: string;
  /** tap-create: the tap's name. */
  tap?: string;
  /** vm-only-up: the host's address on the bridge, ADDR/LEN. */
  address?: string;
  /** usb-open: the open device node; the caller of execute() closes it once sent. */
  fd?: number;
  /** usb-export: the caller's end of the stream usbip-host has the other end of; the caller of execute() destroys it once sent. */
  stream?: net.Socket;
}

function allowed(d: Decision): string {
  if (!d.allowed) throw new HelperError('refused', d.reason);
  return d.rule;
}

function allowList(paths: HelperPaths): AllowList {
  try {
    return readAllowList(paths.allowList);
  } catch (err) {
    const e = err as Error & { problems?: string[] };
    throw new HelperError('refused', `the allow list ${paths.allowList} is not usable: ${(e.problems ?? [e.message]).join('; ')}`);
  }
}

async function ip(args: string[]): Promise<void> {
  try {
    await runProgram(requireProgram('ip'), args, { timeoutMs: 10_000 });
  } catch (err) {
    throw new HelperError('failed', err instanceof ExecError ? `ip ${args.join(' ')}: ${err.message.replace(/^\S+ /, '')}` : (err as Error).message);
  }
}

const readAttr = (file: string): string | undefined => {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
};

export async function execute(cmd: Command, caller: Caller, paths: HelperPaths): Promise<Outcome> {
  switch (cmd.name) {
    case 'tap-create':
      return tapCreate(cmd.arg, caller, paths);
    case 'tap-delete':
      return tapDelete(cmd.arg, caller, paths);
    case 'tap-open':
      return tapOpen(cmd.arg, caller, paths);
    case 'vm-only-up':
      return vmOnlyUp(cmd.arg, caller, paths);
    case 'usb-bind':
      return usbBind(cmd.arg, caller, paths);
    case 'usb-unbind':
      return usbUnbind(cmd.arg, caller, paths);
    case 'usb-open':
      return usbOpen(cmd.arg, caller, paths);
    case 'usb-export':
      return usbExport(cmd.arg, caller, paths);
  }
}

/** The helper's taps that `uid` owns. tun's sysfs `owner` is the kernel's own record, so no state file can drift from it. */
function tapsOf(uid: number, paths: HelperPaths): string[] {
  return readdirSync(paths.netSysfs).filter((n) => !tapNameProblem(n) && readAttr(path.join(paths.netSysfs, n, 'owner')) === String(uid));
}

async function tapCreate(bridge: string, caller: Caller, paths: HelperPaths): Promise<Outcome> {
  const rule = allowed(decideBridge(allowList(paths), caller, bridge));
  if (!existsSync(path.join(paths.netSysfs, bridge))) throw new HelperError('not-found', `no network interface ${bridge} on this host`);
  if (!existsSync(path.join(paths.netSysfs, bridge, 'bridge'))) throw new HelperError('refused', `${bridge} is not a bridge`);
  if (tapsOf(caller.uid, paths).length >= MAX_TAPS_PER_USER) {
    throw new HelperError('refused', `${describeCaller(caller)} already has ${MAX_TAPS_PER_USER} taps from this helper, the most it makes for one user: delete one with tap-delete`);
  }
  let n = 0;
  while (n <= MAX_TAP_NUMBER && existsSync(path.join(paths.netSysfs, `${TAP_PREFIX}${n}`))) n++;
  if (n > MAX_TAP_NUMBER) throw new HelperError('failed', `every name from ${TAP_PREFIX}0 to ${TAP_PREFIX}${MAX_TAP_NUMBER} is taken`);
  const tap = `${TAP_PREFIX}${n}`;
  await ip(['tuntap', 'add', 'dev', tap, 'mode', 'tap', 'user', String(caller.uid)]);
  try {
    await ip(['link', 'set', 'dev', tap, 'master', bridge]);
    await ip(['link', 'set', 'dev', tap, 'up']);
  } catch (err) {
    await ip(['tuntap', 'del', 'dev', tap, 'mode', 'tap']).catch(() => undefined);
    throw err;
  }
  return { rule, tap };
}

/** Throws unless `tap` is one of the helper's taps and the caller owns it (tun's own `owner` attribute). */
function ownTap(tap: string, caller: Caller, paths: HelperPaths): void {
  const dir = path.join(paths.netSysfs, tap);
  if (!existsSync(dir)) throw new HelperError('not-found', `no tap ${tap} on this host`);
  const owner = readAttr(path.join(dir, 'owner'));
  if (owner === undefined) throw new HelperError('refused', `${tap} is not a tap`);
  if (owner !== String(caller.uid)) throw new HelperError('refused', `${tap} belongs to ${owner === '-1' ? 'no user' : `uid ${owner}`}, not to ${describeCaller(caller)}`);
}

async function tapDelete(tap: string, caller: Caller, paths: HelperPaths): Promise<Outcome> {
  ownTap(tap, caller, paths);
  await ip(['tuntap', 'del', 'dev', tap, 'mode', 'tap']);
  return { rule: `${tap} is owned by the caller` };
}

/**
 * One queue of the caller's tap, for a VMM that is handed descriptors
 * (QEMU's getfd, cloud-hypervisor's add-net): the daemon and the VMM may
 * run in another network namespace, or without access to /dev/net/tun.
 */
function tapOpen(tap: string, caller: Caller, paths: HelperPaths): Outcome {
  ownTap(tap, caller, paths);
  try {
    return { rule: `${tap} is owned by the caller`, fd: openTap(tap) };
  } catch (err) {
    throw new HelperError('failed', (err as Error).message);
  }
}

const vmOnlyFile = (bridge: string, paths: HelperPaths, ext = '') => path.join(paths.stateDir, `vm-only-${bridge}${ext}`);

/**
 * A vm-only network's bridge, up: created on first use (no uplink: nothing
 * but the helper's taps is ever enslaved to it), the host's address on it as
 * the allow list gives it, and a DHCP server for the VMs. Idempotent: every
 * join calls it. A bridge of that name the helper did not make is refused,
 * so a rule cannot be used to put an address or a DHCP server on br0.
 */
async function vmOnlyUp(bridge: string, caller: Caller, paths: HelperPaths): Promise<Outcome> {
  const d = decideVmOnly(allowList(paths), caller, bridge);
  if (!d.allowed) throw new HelperError('refused', d.reason);
  const cidr = `${d.address}/${d.prefix}`;
  const marker = vmOnlyFile(bridge, paths);
  if (existsSync(path.join(paths.netSysfs, bridge))) {
    if (!existsSync(path.join(paths.netSysfs, bridge, 'bridge'))) throw new HelperError('refused', `${bridge} exists on this host and is not a bridge`);
    const made = readAttr(marker);
    if (made === undefined) throw new HelperError('refused', `bridge ${bridge} exists but was not made by this helper: it gives no address or DHCP server to a bridge it did not create`);
    if (made !== cidr) throw new HelperError('refused', `vm-only bridge ${bridge} was made with ${made}, and the allow list now gives it ${cidr}: delete it (ip link del ${bridge}) to have it made again`);
  } else {
    mkdirSync(paths.stateDir, { recursive: true, mode: 0o700 });
    await ip(['link', 'add', 'name', bridge, 'type', 'bridge', 'stp_state', '0']);
    writeFileSync(marker, `${cidr}\n`, { mode: 0o600 });
    try {
      await ip(['addr', 'add', cidr, 'dev', bridge]);
    } catch (err) {
      await ip(['link', 'del', 'dev', bridge]).catch(() => undefined);
      rmSync(marker, { force: true });
      throw err;
    }
  }
  await ip(['link', 'set', 'dev', bridge, 'up']);
  await dhcpServer(bridge, d.address, d.prefix, paths);
  return { rule: d.rule, address: cidr };
}

/**
 * dnsmasq as the network's DHCP server, and nothing more: no DNS (port 0),
 * no gateway and no DNS server offered, on this bridge only. It daemonizes,
 * so it outlives the helper's idle exit; its pid file says whether it runs.
 * Leases are handed out on the side of the subnet with more room than the
 * host's own address.
 */
async function dhcpServer(bridge: string, address: string, prefix: number, paths: HelperPaths): Promise<void> {
  const pidFile = vmOnlyFile(bridge, paths, '.pid');
  const pid = readAttr(pidFile);
  if (pid && /^\d+$/.test(pid) && readAttr(`/proc/${pid}/comm`) === 'dnsmasq') return;
  const { host, network, broadcast } = ipv4Range(address, prefix);
  const [first, last] = host - network > broadcast - host ? [network + 1, host - 1] : [host + 1, broadcast - 1];
  const netmask = ipv4Text(2 ** 32 - 2 ** (32 - prefix));
  try {
    await runProgram(
      requireProgram('dnsmasq'),
      [
        '--conf-file=/dev/null',
        `--interface=${bridge}`,
        '--bind-interfaces',
        '--except-interface=lo',
        '--port=0',
        `--dhcp-range=${ipv4Text(first)},${ipv4Text(last)},${netmask},12h`,
        '--dhcp-option=option:router',
        '--dhcp-option=option:dns-server',
        '--dhcp-authoritative',
        `--dhcp-leasefile=${vmOnlyFile(bridge, paths, '.leases')}`,
        `--pid-file=${pidFile}`,
      ],
      { timeoutMs: 10_000 },
    );
  } catch (err) {
    throw new HelperError('failed', `the DHCP server for ${bridge} did not start: ${(err as Error).message}`);
  }
}

function usbDevice(busid: string, paths: HelperPaths): UsbDevice {
  if (!existsSync(paths.usbSysfs)) throw new HelperError('not-found', `no USB device ${busid}: this host has no USB bus (${paths.usbSysfs} is absent)`);
  const dir = path.join(paths.usbSysfs, 'devices', busid);
  if (!existsSync(dir)) throw new HelperError('not-found', `no USB device ${busid} (no ${dir})`);
  const attr = (name: string) => {
    const v = readAttr(path.join(dir, name))?.toLowerCase();
    if (v === undefined || !/^[0-9a-f]{2,4}$/.test(v)) throw new HelperError('failed', `${dir}/${name} is missing or unreadable`);
    return v;
  };
  const interfaceClasses = readdirSync(dir)
    .filter((n) => n.startsWith(`${busid}:`))
    .map((n) => readAttr(path.join(dir, n, 'bInterfaceClass'))?.toLowerCase())
    .filter((c): c is string => c !== undefined);
  return { busid, vendor: attr('idVendor'), product: attr('idProduct'), deviceClass: attr('bDeviceClass'), interfaceClasses };
}

/** The sysfs sequences are usbip.ts's; this maps its errors to the helper's kinds, with its words. */
function sysfs<T>(op: () => T): T {
  try {
    return op();
  } catch (err) {
    if (!(err instanceof UsbipError)) throw err;
    throw new HelperError(err.kind === 'state' ? 'refused' : err.kind === 'not-found' ? 'not-found' : 'failed', err.message);
  }
}

const record = (busid: string, paths: HelperPaths) => path.join(paths.stateDir, `usbip-${busid}`);

/** Bound as `usbip bind` binds (usbip.ts), once the allow list says so, and recorded for the caller. */
function usbBind(busid: string, caller: Caller, paths: HelperPaths): Outcome {
  const dev = usbDevice(busid, paths);
  const rule = allowed(decideUsb(allowList(paths), caller, dev));
  // The record's folder first: no device is taken that could not be recorded.
  mkdirSync(paths.stateDir, { recursive: true, mode: 0o700 });
  sysfs(() => bindToUsbipHost(busid, { usbBus: paths.usbSysfs }));
  // Who it was bound for, and which device it was: usbip-host keeps the port, and would take whatever is plugged in there next.
  writeFileSync(record(busid, paths), `${caller.uid}\n${identity(dev, paths)}\n`, { mode: 0o600 });
  return { rule: `${rule} (${describeDevice(dev)})` };
}

/** VVVV:PPPP, and /SERIAL when the device has one (its own words: printable ASCII, capped). */
function identity(dev: UsbDevice, paths: HelperPaths): string {
  const serial = readAttr(path.join(paths.usbSysfs, 'devices', dev.busid, 'serial'));
  return `${dev.vendor}:${dev.product}${serial ? `/${printable(serial, 64)}` : ''}`;
}

/** Throws unless usbip-host has BUSID and this helper bound it for the caller; answers the identity() it bound there. */
function boundForCaller(busid: string, caller: Caller, paths: HelperPaths): string | undefined {
  sysfs(() => checkBoundToUsbipHost(busid, { usbBus: paths.usbSysfs }));
  const [boundBy, ids] = (readAttr(record(busid, paths)) ?? '').split('\n');
  if (!boundBy) throw new HelperError('refused', `${busid} was not bound to ${USBIP_HOST} by this helper`);
  if (boundBy !== String(caller.uid)) throw new HelperError('refused', `${busid} was bound to ${USBIP_HOST} for uid ${boundBy}, not for ${describeCaller(caller)}`);
  return ids;
}

/** Only what this helper bound, for the uid it bound it for; then the device's own driver back (usbip.ts). */
function usbUnbind(busid: string, caller: Caller, paths: HelperPaths): Outcome {
  usbDevice(busid, paths);
  const usb = { usbBus: paths.usbSysfs };
  boundForCaller(busid, caller, paths);
  sysfs(() => unbindFromUsbipHost(busid, usb));
  rmSync(record(busid, paths), { force: true });
  return { rule: `${busid} was bound for the caller` };
}

/**
 * The host kernel as USB/IP's exporting side: a device this helper bound
 * for the caller (usb-bind) gets one end of a new stream socket, as
 * `usbip attach` over TCP would give it; the caller is handed the other
 * end, to relay to the VM that imports the device. The bind's decision
 * stands: bound to usbip-host, a device has no interfaces in sysfs, so a
 * class rule could not be asked again. It must still be the device that
 * was bound, since usbip-host takes whatever is plugged into a port it
 * was given. Undone by usb-unbind, which ends the stream too.
 */
async function usbExport(busid: string, caller: Caller, paths: HelperPaths): Promise<Outcome> {
  const dev = usbDevice(busid, paths);
  const ids = boundForCaller(busid, caller, paths);
  const now = identity(dev, paths);
  if (ids !== now) throw new HelperError('refused', `${busid} is ${now} now, not the ${ids ?? 'device'} bound for ${describeCaller(caller)}: usb-unbind it and bind it again`);
  const rule = `bound for ${describeCaller(caller)} by usb-bind`;
  const [kernel, theirs] = await streamPair('unix');
  try {
    // Handed over and closed in one tick: this process never reads a byte of the URB stream.
    sysfs(() => exportOnSocket(busid, socketFd(kernel), { usbBus: paths.usbSysfs }));
  } catch (err) {
    theirs.destroy();
    throw err;
  } finally {
    kernel.destroy();
  }
  return { rule: `${rule} (${describeDevice(dev)})`, stream: theirs };
}

/** Opened read-write for passthrough, and only if the node is the device sysfs names (its `dev`), not whatever took its number. */
function usbOpen(busid: string, caller: Caller, paths: HelperPaths): Outcome {
  const dev = usbDevice(busid, paths);
  const rule = allowed(decideUsb(allowList(paths), caller, dev));
  const sys = path.join(paths.usbSysfs, 'devices', busid);
  const [busnum, devnum, majmin] = ['busnum', 'devnum', 'dev'].map((a) => readAttr(path.join(sys, a)));
  const want = /^(\d+):(\d+)$/.exec(majmin ?? '');
  if (!busnum || !devnum || !/^\d{1,3}$/.test(busnum) || !/^\d{1,3}$/.test(devnum) || !want) throw new HelperError('failed', `${sys} has no usable busnum, devnum and dev`);
  const node = path.join(paths.devUsb, busnum.padStart(3, '0'), devnum.padStart(3, '0'));
  let fd: number;
  try {
    fd = openSync(node, constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NOCTTY);
  } catch (err) {
    throw new HelperError('not-found', `cannot open ${node} for ${busid}: ${(err as Error).message}`);
  }
  const st = fstatSync(fd, { bigint: true });
  const major = Number(((st.rdev >> 8n) & 0xfffn) | ((st.rdev >> 32n) & ~0xfffn));
  const minor = Number((st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn));
  if (!st.isCharacterDevice() || major !== Number(want[1]) || minor !== Number(want[2])) {
    closeSync(fd);
    throw new HelperError('refused', `${node} is not the device node of ${busid} (${want[0]})`);
  }
  return { rule: `${rule} (${describeDevice(dev)})`, fd };
}
