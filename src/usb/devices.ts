import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { dependency, MissingDependencyError, whichProgram } from '../deps.js';
import { startService, type Exit } from '../exec.js';
import { busIdProblem } from '../helper/commands.js';
import { HUB_CLASS } from '../helper/decide.js';
import { childLogger } from '../log.js';

/**
 * The host's USB devices, read from sysfs as the kernel lays them out, each
 * described the way the rest of the desktop names it: the permission key is
 * xdg-desktop-portal's own (`usb:` ID_VENDOR_ID `/` ID_MODEL_ID `/`
 * ID_SERIAL, desktop-portal/usb.c), with ID_SERIAL exactly what udev's
 * `usb_id` builtin gives a usb_device (read from udev's database when udev
 * runs, computed by udev's own rules when it does not).
 *
 * Everything in sysfs about a device came from the device, so it is data to
 * check: reads are capped, numbers validated, names stripped of control and
 * format characters and capped. A device that vanishes mid-read, or whose
 * directory is half gone, is left out, never an error.
 */

export type Removable = 'removable' | 'fixed' | 'unknown';

export interface UsbInterface {
  /** sysfs name, `BUSID:CONFIG.NUMBER`, e.g. `1-2:1.0`. */
  name: string;
  number: number;
  /** bInterfaceClass, bInterfaceSubClass, bInterfaceProtocol: two lowercase hex digits. */
  class: string;
  subclass: string;
  protocol: string;
  /** The bound driver's name (usbhid, usb-storage, …), if any. */
  driver: string | undefined;
}

export interface UsbHostDevice {
  /** `BUS-PORT[.PORT]…`, e.g. `1-2.3`. */
  busid: string;
  busnum: number;
  devnum: number;
  /** The device node's numbers (major 189), from sysfs `dev` or the kernel's formula. */
  major: number;
  minor: number;
  /** idVendor, idProduct: four lowercase hex digits, as sysfs (and so udev's ID_VENDOR_ID/ID_MODEL_ID) give them. */
  vendorId: string;
  productId: string;
  /** bcdDevice, four hex digits. */
  bcdDevice: string | undefined;
  /** The device's own strings, for showing: control and format characters stripped, capped at MAX_TEXT code points. */
  manufacturer: string | undefined;
  product: string | undefined;
  serial: string | undefined;
  /** bDeviceClass, two lowercase hex digits. */
  deviceClass: string;
  /** bConfigurationValue of the active configuration; undefined while the device is unconfigured. */
  configuration: number | undefined;
  /** The active configuration's interfaces, by number. */
  interfaces: UsbInterface[];
  /** Mb/s as sysfs writes it: "1.5", "12", "480", "5000", … */
  speed: string | undefined;
  removable: Removable;
  /** The driver bound to the device itself (usb, usbip-host), if any. */
  driver: string | undefined;
  /** udev's ID_SERIAL for this usb_device. */
  idSerial: string;
  /** Where idSerial came from: udev's database, or computed here by usb_id's rules. */
  idSerialFrom: 'udev' | 'computed';
}

export interface UsbSysfsOptions {
  /** Default /sys. */
  sysfs?: string;
  /** udev's database, default /run/udev/data. */
  udevData?: string;
}

/** A USB string descriptor holds at most 126 UTF-16 units; nothing we show is longer. */
export const MAX_TEXT = 126;
/** sysfs hands out at most a page per attribute. */
const MAX_ATTR_BYTES = 4096;
const MAX_UDEV_DB_BYTES = 64 * 1024;
/** More device entries than any real bus tree holds (127 devices per bus); a bound on the work, not a limit in practice. */
const MAX_ENTRIES = 4096;
/** include/linux/usb.h: USB_DEVICE_MAJOR. */
export const USB_DEVICE_MAJOR = 189;

const log = () => childLogger({ component: 'usb-devices' });

// ---------------------------------------------------------------------------
// Reading sysfs

/** The file's first MAX_ATTR_BYTES, or undefined if it cannot be read (gone, a directory, no permission). */
function readCapped(file: string, max = MAX_ATTR_BYTES): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return undefined;
  }
  try {
    const buf = Buffer.alloc(max);
    const n = readSync(fd, buf, 0, max, 0);
    return buf.subarray(0, n);
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * An attribute's value as udev's sd-device reads it: trailing newlines and
 * carriage returns dropped, and (being a C string from there on) cut at the
 * first NUL.
 */
function attrBytes(dir: string, name: string): Buffer | undefined {
  const raw = readCapped(path.join(dir, name));
  if (raw === undefined) return undefined;
  const nul = raw.indexOf(0);
  let end = nul >= 0 ? nul : raw.length;
  while (end > 0 && (raw[end - 1] === 0x0a || raw[end - 1] === 0x0d)) end--;
  return raw.subarray(0, end);
}

function attrAscii(dir: string, name: string): string | undefined {
  return attrBytes(dir, name)?.toString('latin1').trim();
}

/** Lowercase hex of exactly `digits` digits, or undefined. */
function hexAttr(dir: string, name: string, digits: number): string | undefined {
  const v = attrAscii(dir, name);
  return v !== undefined && v.length === digits && /^[0-9a-fA-F]+$/.test(v) ? v.toLowerCase() : undefined;
}

/** A decimal integer in [min, max], or undefined. */
function decAttr(dir: string, name: string, min: number, max: number): number | undefined {
  const v = attrAscii(dir, name);
  if (v === undefined || !/^[0-9]{1,7}$/.test(v)) return undefined;
  const n = Number(v);
  return n >= min && n <= max ? n : undefined;
}

const UNSHOWABLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;

/** Device text for showing: UTF-8 (bad bytes become U+FFFD), controls and format characters stripped, trimmed, capped. */
export function showableText(raw: Buffer | string, max = MAX_TEXT): string {
  const text = (typeof raw === 'string' ? raw : raw.toString('utf8')).replace(UNSHOWABLE, '').trim();
  const chars = Array.from(text);
  return chars.length > max ? chars.slice(0, max).join('') : text;
}

function driverOf(dir: string): string | undefined {
  try {
    const name = path.basename(readlinkSync(path.join(dir, 'driver')));
    return /^[A-Za-z0-9_.:-]{1,64}$/.test(name) ? name : undefined;
  } catch {
    return undefined;
  }
}

/** Sorted, so what is built from it does not depend on the filesystem's order. */
function listDir(dir: string): string[] {
  try {
    return readdirSync(dir).slice(0, MAX_ENTRIES).sort();
  } catch {
    return [];
  }
}

/** A device directory that is missing what every configured USB device has: unplugged mid-read. */
class Broken extends Error {}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Broken(what);
  return value;
}

// ---------------------------------------------------------------------------
// Devices

/** The device's node minor: drivers/usb/core/hub.c, usb_new_device(): (busnum - 1) * 128 + (devnum - 1). */
export function usbDeviceMinor(busnum: number, devnum: number): number {
  return (busnum - 1) * 128 + (devnum - 1);
}

/** Every USB device on the host: no root hubs (usbN), no interfaces. A device being plugged or unplugged may be missing. */
export function listUsbDevices(opts: UsbSysfsOptions = {}): UsbHostDevice[] {
  const devicesDir = path.join(opts.sysfs ?? '/sys', 'bus', 'usb', 'devices');
  const devices: UsbHostDevice[] = [];
  for (const name of listDir(devicesDir).filter((n) => busIdProblem(n) === undefined).sort(compareBusIds)) {
    const dev = readUsbDevice(name, opts);
    if (dev) devices.push(dev);
  }
  return devices;
}

/** One device by bus id, or undefined when it is not there (or not readable as a whole). */
export function readUsbDevice(busid: string, opts: UsbSysfsOptions = {}): UsbHostDevice | undefined {
  if (busIdProblem(busid) !== undefined) return undefined;
  const dir = path.join(opts.sysfs ?? '/sys', 'bus', 'usb', 'devices', busid);
  try {
    return readDevice(busid, dir, opts.udevData ?? '/run/udev/data');
  } catch (err) {
    if (!(err instanceof Broken)) throw err;
    log().debug({ busid, missing: err.message }, 'USB device skipped: its sysfs directory is incomplete (unplugged while read?)');
    return undefined;
  }
}

/** Bus ids (checked by busIdProblem): `1-2` < `1-2.1` < `1-10` < `2-1`, by bus, then port by port. */
function compareBusIds(a: string, b: string): number {
  const pa = a.split(/[-.]/).map(Number);
  const pb = b.split(/[-.]/).map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined || y === undefined) return x === undefined ? -1 : 1;
    if (x !== y) return x - y;
  }
  return 0;
}

/** The raw attributes usb_id reads, as sd-device hands them over (see attrBytes). */
export interface DeviceStrings {
  idVendor: Buffer;
  idProduct: Buffer;
  manufacturer: Buffer | undefined;
  product: Buffer | undefined;
  serial: Buffer | undefined;
}

function readDevice(busid: string, linkDir: string, udevData: string): UsbHostDevice {
  let dir: string;
  try {
    dir = realpathSync(linkDir);
  } catch {
    throw new Broken('the device directory');
  }
  const busnum = need(decAttr(dir, 'busnum', 1, 999), 'busnum');
  const devnum = need(decAttr(dir, 'devnum', 1, 127), 'devnum');
  const strings: DeviceStrings = {
    idVendor: need(attrBytes(dir, 'idVendor'), 'idVendor'),
    idProduct: need(attrBytes(dir, 'idProduct'), 'idProduct'),
    manufacturer: attrBytes(dir, 'manufacturer'),
    product: attrBytes(dir, 'product'),
    serial: attrBytes(dir, 'serial'),
  };
  const vendorId = need(hexAttr(dir, 'idVendor', 4), 'idVendor (4 hex digits)');
  const productId = need(hexAttr(dir, 'idProduct', 4), 'idProduct (4 hex digits)');
  const deviceClass = need(hexAttr(dir, 'bDeviceClass', 2), 'bDeviceClass');
  const { major, minor } = nodeNumbers(dir, busnum, devnum);
  const configuration = activeConfiguration(dir);
  const interfaces = configuration === undefined ? [] : readInterfaces(dir, busid, configuration);
  const fromUdev = udevIdSerial(udevData, major, minor, vendorId, productId);
  const dev: UsbHostDevice = {
    busid,
    busnum,
    devnum,
    major,
    minor,
    vendorId,
    productId,
    bcdDevice: hexAttr(dir, 'bcdDevice', 4),
    manufacturer: strings.manufacturer && showableText(strings.manufacturer),
    product: strings.product && showableText(strings.product),
    serial: strings.serial && showableText(strings.serial),
    deviceClass,
    configuration,
    interfaces,
    speed: speedOf(dir),
    removable: removableOf(dir),
    driver: driverOf(dir),
    idSerial: fromUdev ?? computeIdSerial(strings),
    idSerialFrom: fromUdev === undefined ? 'computed' : 'udev',
  };
  // Unplugged and another device plugged in at the same port while we read: not one device.
  if (decAttr(dir, 'devnum', 1, 127) !== devnum) throw new Broken('devnum (changed while read)');
  return dev;
}

function nodeNumbers(dir: string, busnum: number, devnum: number): { major: number; minor: number } {
  const m = /^(\d{1,4}):(\d{1,7})$/.exec(attrAscii(dir, 'dev') ?? '');
  if (m) return { major: Number(m[1]), minor: Number(m[2]) };
  return { major: USB_DEVICE_MAJOR, minor: usbDeviceMinor(busnum, devnum) };
}

/** bConfigurationValue is empty while the device is unconfigured (just plugged, or refused a configuration). */
function activeConfiguration(dir: string): number | undefined {
  const v = attrAscii(dir, 'bConfigurationValue');
  if (v === undefined) throw new Broken('bConfigurationValue');
  return /^[0-9]{1,3}$/.test(v) && Number(v) <= 255 ? Number(v) : undefined;
}

function readInterfaces(dir: string, busid: string, configuration: number): UsbInterface[] {
  const prefix = `${busid}:${configuration}.`;
  const out: UsbInterface[] = [];
  for (const name of listDir(dir)) {
    if (!name.startsWith(prefix)) continue;
    const num = name.slice(prefix.length);
    if (!/^[0-9]{1,3}$/.test(num)) continue;
    const ifDir = path.join(dir, name);
    out.push({
      name,
      number: Number(num),
      class: need(hexAttr(ifDir, 'bInterfaceClass', 2), `${name}/bInterfaceClass`),
      subclass: need(hexAttr(ifDir, 'bInterfaceSubClass', 2), `${name}/bInterfaceSubClass`),
      protocol: need(hexAttr(ifDir, 'bInterfaceProtocol', 2), `${name}/bInterfaceProtocol`),
      driver: driverOf(ifDir),
    });
  }
  return out.sort((a, b) => a.number - b.number);
}

function speedOf(dir: string): string | undefined {
  const v = attrAscii(dir, 'speed');
  return v !== undefined && /^[0-9]{1,6}(\.[0-9]{1,3})?$/.test(v) ? v : undefined;
}

/** drivers/usb/core/sysfs.c: the port's connect type, as "removable", "fixed" or "unknown". */
function removableOf(dir: string): Removable {
  const v = attrAscii(dir, 'removable');
  return v === 'removable' || v === 'fixed' ? v : 'unknown';
}

// ---------------------------------------------------------------------------
// ID_SERIAL, as systemd-udevd's usb_id builtin makes it for a usb_device

/**
 * ID_SERIAL from udev's database entry for the device node (`c189:MINOR`),
 * when udev has processed the device. An entry whose ID_VENDOR_ID or
 * ID_MODEL_ID disagrees with sysfs is another device's, left over: ignored.
 */
function udevIdSerial(udevData: string, major: number, minor: number, vendorId: string, productId: string): string | undefined {
  const raw = readCapped(path.join(udevData, `c${major}:${minor}`), MAX_UDEV_DB_BYTES);
  if (raw === undefined) return undefined;
  const props = new Map<string, string>();
  for (const line of raw.toString('utf8').split('\n')) {
    const m = /^E:(ID_SERIAL|ID_VENDOR_ID|ID_MODEL_ID)=(.*)$/.exec(line);
    if (m && !props.has(m[1]!)) props.set(m[1]!, m[2]!);
  }
  const serial = props.get('ID_SERIAL');
  if (serial === undefined || serial.length > 512 || /[\p{Cc}\ufffd]/u.test(serial)) return undefined;
  if ((props.get('ID_VENDOR_ID') ?? vendorId) !== vendorId || (props.get('ID_MODEL_ID') ?? productId) !== productId) return undefined;
  return serial;
}

/**
 * ID_SERIAL computed as src/udev/udev-builtin-usb_id.c does for a device of
 * DEVTYPE usb_device (it goes straight to its fallback: no SCSI inquiry):
 * vendor is the `manufacturer` attribute, else idVendor; model is `product`,
 * else idProduct; each through udev_replace_whitespace (63 bytes) and
 * udev_replace_chars. The serial is the `serial` attribute, dropped whole if
 * any byte is below 0x20, above 0x7f or a comma, else treated the same way
 * (511 bytes). ID_SERIAL is vendor_model, plus _serial when there is one, in
 * a 256-byte buffer. Bytes, not characters, as udev counts them.
 */
export function computeIdSerial(s: DeviceStrings): string {
  const vendor = replaceChars(replaceWhitespace(s.manufacturer ?? s.idVendor, 63));
  const model = replaceChars(replaceWhitespace(s.product ?? s.idProduct, 63));
  const serial = s.serial !== undefined && s.serial.every((b) => b >= 0x20 && b <= 0x7f && b !== 0x2c) ? replaceChars(replaceWhitespace(s.serial, 511)) : Buffer.alloc(0);
  const parts = [vendor, Buffer.from('_'), model, ...(serial.length > 0 ? [Buffer.from('_'), serial] : [])];
  // strpcpyl into char serial[256]: at most 255 bytes. Only the (ASCII) serial can reach that far.
  return Buffer.concat(parts).subarray(0, 255).toString('utf8');
}

/** udev_replace_whitespace's leading set (WHITESPACE, " \t\n\r"), and C isspace() for the rest. */
const isLeadingSpace = (b: number) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
const isCSpace = (b: number) => b === 0x20 || (b >= 0x09 && b <= 0x0d);

/**
 * Leading and trailing whitespace removed and each inner run of it made one
 * "_", reading at most `len` bytes of the input (leading whitespace counts)
 * and writing at most `len`.
 */
export function replaceWhitespace(str: Uint8Array, len: number): Buffer {
  const out: number[] = [];
  let i = 0;
  while (i < str.length && isLeadingSpace(str[i]!)) i++;
  let inSpace = false;
  for (; out.length < len && i < len && i < str.length; i++) {
    const b = str[i]!;
    if (isCSpace(b)) {
      inSpace = true;
      continue;
    }
    if (inSpace) {
      if (out.length + 1 >= len) break;
      out.push(0x5f);
      inSpace = false;
    }
    out.push(b);
  }
  return Buffer.from(out);
}

/** src/shared/device-nodes.c: allow_listed_char_for_devnode() with no extra characters. */
const isDevnodeChar = (b: number) =>
  (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || '#+-.:=@_'.includes(String.fromCharCode(b));

/**
 * udev_replace_chars(str, NULL): letters, digits and `#+-.:=@_` stay, a
 * `\x` pair stays, a valid multi-byte UTF-8 character stays; every other
 * byte becomes "_".
 */
export function replaceChars(str: Uint8Array): Buffer {
  const out = Buffer.from(str);
  let i = 0;
  while (i < out.length) {
    const b = out[i]!;
    if (isDevnodeChar(b)) {
      i++;
      continue;
    }
    if (b === 0x5c && out[i + 1] === 0x78) {
      i += 2;
      continue;
    }
    const n = utf8CharLength(out, i);
    if (n > 1) {
      i += n;
      continue;
    }
    out[i] = 0x5f;
    i++;
  }
  return out;
}

/** src/basic/utf8.c, utf8_encoded_valid_unichar(): the length of the valid character at `at`, or -1. */
function utf8CharLength(buf: Uint8Array, at: number): number {
  const first = buf[at]!;
  const len = first < 0x80 ? 1 : (first & 0xe0) === 0xc0 ? 2 : (first & 0xf0) === 0xe0 ? 3 : (first & 0xf8) === 0xf0 ? 4 : (first & 0xfc) === 0xf8 ? 5 : (first & 0xfe) === 0xfc ? 6 : 0;
  if (len === 0 || at + len > buf.length) return -1;
  if (len === 1) return 1;
  let cp = first & (0xff >> (len + 1));
  for (let k = 1; k < len; k++) {
    const c = buf[at + k]!;
    if ((c & 0xc0) !== 0x80) return -1;
    cp = cp * 64 + (c & 0x3f);
  }
  const shortest = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : cp < 0x200000 ? 4 : cp < 0x4000000 ? 5 : 6;
  return shortest === len && unicharIsValid(cp) ? len : -1;
}

/** src/basic/utf8.c, unichar_is_valid(). */
function unicharIsValid(cp: number): boolean {
  if (cp >= 0x110000) return false;
  if (cp >= 0xd800 && cp <= 0xdfff) return false;
  if (cp >= 0xfdd0 && cp <= 0xfdef) return false;
  return (cp & 0xfffe) !== 0xfffe;
}

/**
 * The device's key in the permission store's `usb` table, as
 * xdg-desktop-portal's Usb portal builds it (desktop-portal/usb.c,
 * unique_permission_id_for_device): `usb:` ID_VENDOR_ID `/` ID_MODEL_ID `/`
 * ID_SERIAL.
 */
export function permissionKey(dev: Pick<UsbHostDevice, 'vendorId' | 'productId' | 'idSerial'>): string {
  return `usb:${dev.vendorId}/${dev.productId}/${dev.idSerial}`;
}

// ---------------------------------------------------------------------------
// Whether a device is offered to VMs

export type Offer =
  | { offered: false; why: string; massStorage: boolean }
  | { offered: true; warning?: string; massStorage: boolean };

export const MASS_STORAGE_CLASS = '08';
const HID_CLASS = '03';
const HID_BOOT_SUBCLASS = '01';

/** `"QEMU USB Keyboard" (0627:0001) at 1-2`. */
export function describeUsbDevice(dev: Pick<UsbHostDevice, 'busid' | 'vendorId' | 'productId' | 'product'>): string {
  return `${dev.product ? `"${dev.product}" ` : 'USB device '}(${dev.vendorId}:${dev.productId}) at ${dev.busid}`;
}

function bootHid(dev: UsbHostDevice, protocol: '01' | '02'): boolean {
  return dev.interfaces.some((i) => i.class === HID_CLASS && i.subclass === HID_BOOT_SUBCLASS && i.protocol === protocol);
}

/** Pure: whether `dev` may be handed to a VM at all, and what the user must be told if so. */
export function offerOf(dev: UsbHostDevice): Offer {
  const massStorage = dev.interfaces.some((i) => i.class === MASS_STORAGE_CLASS);
  const name = describeUsbDevice(dev);
  if (dev.deviceClass === HUB_CLASS || dev.interfaces.some((i) => i.class === HUB_CLASS)) {
    return { offered: false, massStorage, why: `${name} is a USB hub: a hub is never handed to a VM, though the devices plugged into it can be, one at a time` };
  }
  if (dev.removable === 'fixed') {
    return { offered: false, massStorage, why: `${name} is built into this computer (its port is fixed, not removable): built-in devices are never handed to a VM` };
  }
  if (dev.configuration === undefined) {
    return { offered: false, massStorage, why: `${name} has no active configuration yet, so what it is cannot be told: it is still being set up, or it was not authorized` };
  }
  const keyboard = bootHid(dev, '01');
  const mouse = bootHid(dev, '02');
  if (keyboard || mouse) {
    const what = keyboard && mouse ? 'keyboard and mouse' : keyboard ? 'keyboard' : 'mouse';
    return { offered: true, massStorage, warning: `${name} is a ${what}: while the VM has it, this computer loses that ${what}` };
  }
  return { offered: true, massStorage };
}

// ---------------------------------------------------------------------------
// Mounted filesystems on a storage device

export interface BlockDevice {
  /** Kernel name: sdb, sdb1, or a holder stacked on one (dm-0). */
  name: string;
  /** MAJOR:MINOR from sysfs `dev`. */
  dev: string;
  /** For a holder (device-mapper, md): the block device it sits on. */
  on?: string;
  /** Where it is mounted, per mountinfo; empty when it is not. */
  mountPoints: string[];
}

export interface MountOptions {
  sysfs?: string;
  /** Default /proc/self/mountinfo. */
  mountinfo?: string;
}

const MAX_HOLDER_DEPTH = 4;

/**
 * The block devices on a USB device (every disk under its interfaces'
 * `host*` / `target*` / `H:C:T:L` / `block`, each disk's partitions, and
 * what is stacked on them, e.g. a LUKS or LVM mapping), each with its mount
 * points from mountinfo, matched by MAJOR:MINOR (field 3) or, for
 * filesystems such as btrfs that report an anonymous device there, by the
 * mount source `/dev/NAME`.
 */
export function mountedFilesystemsOf(dev: Pick<UsbHostDevice, 'busid'>, opts: MountOptions = {}): BlockDevice[] {
  const sysfs = opts.sysfs ?? '/sys';
  const found: Omit<BlockDevice, 'mountPoints'>[] = [];
  const seen = new Set<string>();
  const add = (name: string, dir: string, on?: string) => {
    const majmin = attrAscii(dir, 'dev');
    if (seen.has(name) || majmin === undefined || !/^\d{1,4}:\d{1,7}$/.test(majmin) || !/^[A-Za-z0-9_.:!-]{1,64}$/.test(name)) return false;
    seen.add(name);
    found.push(on === undefined ? { name, dev: majmin } : { name, dev: majmin, on });
    return true;
  };
  const holders = (dir: string, name: string, depth: number) => {
    if (depth >= MAX_HOLDER_DEPTH) return;
    for (const h of listDir(path.join(dir, 'holders'))) {
      const hDir = path.join(dir, 'holders', h);
      if (add(h, hDir, name)) holders(hDir, h, depth + 1);
    }
  };
  for (const disk of disksOf(path.join(sysfs, 'bus', 'usb', 'devices', dev.busid), dev.busid)) {
    if (!add(disk.name, disk.dir)) continue;
    holders(disk.dir, disk.name, 0);
    for (const part of listDir(disk.dir)) {
      const partDir = path.join(disk.dir, part);
      if (readCapped(path.join(partDir, 'partition')) === undefined) continue;
      if (add(part, partDir)) holders(partDir, part, 0);
    }
  }
  const mounts = readMountinfo(opts.mountinfo ?? '/proc/self/mountinfo');
  return found.map((b) => ({
    ...b,
    mountPoints: [...new Set(mounts.filter((m) => m.dev === b.dev || m.source === `/dev/${b.name}`).map((m) => m.mountPoint))],
  }));
}

/** INTERFACE/hostN/targetN:C:T/N:C:T:L/block/NAME for each of the device's interfaces. */
function disksOf(deviceDir: string, busid: string): { name: string; dir: string }[] {
  const disks: { name: string; dir: string }[] = [];
  for (const intf of listDir(deviceDir).filter((n) => n.startsWith(`${busid}:`))) {
    const intfDir = path.join(deviceDir, intf);
    for (const host of listDir(intfDir).filter((n) => /^host\d+$/.test(n))) {
      const hostDir = path.join(intfDir, host);
      for (const target of listDir(hostDir).filter((n) => /^target\d+:\d+:\d+$/.test(n))) {
        const targetDir = path.join(hostDir, target);
        for (const lun of listDir(targetDir).filter((n) => /^\d+:\d+:\d+:\d+$/.test(n))) {
          const blockDir = path.join(targetDir, lun, 'block');
          for (const name of listDir(blockDir)) disks.push({ name, dir: path.join(blockDir, name) });
        }
      }
    }
  }
  return disks;
}

interface Mount {
  dev: string;
  mountPoint: string;
  source: string;
}

/** proc(5): ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER-OPTIONS; octal escapes in paths. */
function readMountinfo(file: string): Mount[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    log().warn({ err, file }, 'cannot read mountinfo: no USB disk will be found mounted');
    return [];
  }
  const mounts: Mount[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 10 || sep < 0 || !/^\d+:\d+$/.test(f[2]!)) continue;
    mounts.push({ dev: f[2]!, mountPoint: unescapeMountinfo(f[4]!), source: unescapeMountinfo(f[sep + 2] ?? '') });
  }
  return mounts;
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Why a device with mounted filesystems is refused, naming them; undefined when none is mounted. */
export function mountRefusal(dev: Pick<UsbHostDevice, 'busid' | 'vendorId' | 'productId' | 'product'>, blocks: readonly BlockDevice[]): string | undefined {
  const mounted = blocks.filter((b) => b.mountPoints.length > 0);
  if (mounted.length === 0) return undefined;
  const list = mounted.map((b) => `${b.name}${b.on ? ` (on ${b.on})` : ''} at ${b.mountPoints.map((p) => showableText(p, 200)).join(', ')}`).join('; ');
  return `${describeUsbDevice(dev)} has filesystems mounted on this computer (${list}): unmount ${mounted.length === 1 ? 'it' : 'them'} first, so nothing is lost when the VM takes the device`;
}

// ---------------------------------------------------------------------------
// Hot-plug

export interface UsbChange {
  action: 'add' | 'remove';
  busid: string;
}

export interface WatchOptions {
  /** The udevadm to run; default the one src/deps.ts finds. */
  udevadm?: string;
  /** Called if the monitor ends without close(): no more events will come. */
  onExit?: (exit: Exit, stderr: string) => void;
}

export interface UsbWatch {
  close(): void;
  /**
   * Resolves once the monitor listens to the kernel: list the devices after
   * it, and a device plugged in meanwhile is in the list, its event, or both.
   * Rejects if the monitor ends first.
   */
  readonly ready: Promise<void>;
  /** The monitor's exit. */
  readonly exited: Promise<Exit>;
}

/** No uevent line is near this; longer ones are dropped unread. */
export const MAX_UEVENT_LINE = 8192;
/** A uevent carries a dozen or so properties (the kernel's buffer holds 64). */
const MAX_UEVENT_PROPERTIES = 64;

/**
 * Kernel uevents for usb_device, through `udevadm monitor --kernel
 * --property`: they come from the kernel's netlink socket, so no udevd need
 * run. A device's `add` is reported when it appears, and again at its
 * `bind`, once its driver has configured it and its interfaces are in sysfs
 * (at the kernel's add they are not yet): read the device again on each.
 */
export function watchUsbDevices(onChange: (e: UsbChange) => void, opts: WatchOptions = {}): UsbWatch {
  const udevadm = opts.udevadm ?? whichProgram(dependency('udevadm').candidates);
  if (!udevadm) throw new MissingDependencyError(dependency('udevadm'));
  let listening!: () => void;
  let failed!: (err: Error) => void;
  const ready = new Promise<void>((resolve, reject) => ((listening = resolve), (failed = reject)));
  ready.catch(() => undefined);
  const parser = new UeventParser(onChange, () => listening());
  let closed = false;
  const service = startService('udevadm-monitor', udevadm, ['monitor', '--kernel', '--subsystem-match=usb/usb_device', '--property'], {
    maxLineLength: MAX_UEVENT_LINE,
    onStdoutLine: (line) => parser.line(line),
  });
  const exited = service.exited.then((exit) => {
    failed(new Error(`udevadm monitor ended (${exit.code ?? exit.signal}) before it listened: ${showableText(service.stderr.trim(), 500)}`));
    if (!closed) {
      const stderr = showableText(service.stderr.trim().split('\n').slice(-3).join(' '), 500);
      log().warn({ exit, stderr }, 'the USB hot-plug monitor ended: plugging and unplugging will not be noticed');
      opts.onExit?.(exit, stderr);
    }
    return exit;
  });
  return {
    close: () => {
      closed = true;
      service.kill();
    },
    ready,
    exited,
  };
}

/**
 * udevadm-monitor.c's output: its banner, whose `KERNEL - the kernel uevent`
 * line it prints once the kernel socket is set up; then one event per
 * blank-line-terminated block, a `KERNEL[…] ACTION DEVPATH (SUBSYSTEM)`
 * header and KEY=VALUE lines.
 */
export class UeventParser {
  private props = new Map<string, string>();
  private overflow = false;

  constructor(
    private readonly onChange: (e: UsbChange) => void,
    private readonly onListening: () => void = () => undefined,
  ) {}

  line(line: string): void {
    if (line === '') return this.end();
    if (line.startsWith('KERNEL - ')) return this.onListening();
    if (/^(KERNEL|UDEV)\[/.test(line)) {
      this.props.clear();
      this.overflow = false;
      return;
    }
    const m = /^([A-Z0-9_]{1,64})=(.*)$/.exec(line);
    if (!m) return;
    if (this.props.size >= MAX_UEVENT_PROPERTIES) this.overflow = true;
    else this.props.set(m[1]!, m[2]!);
  }

  private end(): void {
    const p = this.props;
    this.props = new Map();
    const overflow = this.overflow;
    this.overflow = false;
    if (overflow || p.get('SUBSYSTEM') !== 'usb' || p.get('DEVTYPE') !== 'usb_device') return;
    const kernelAction = p.get('ACTION');
    const action = kernelAction === 'add' || kernelAction === 'bind' ? 'add' : kernelAction === 'remove' ? 'remove' : undefined;
    const busid = path.posix.basename(p.get('DEVPATH') ?? '');
    if (action === undefined || busIdProblem(busid) !== undefined) return;
    this.onChange({ action, busid });
  }
}
