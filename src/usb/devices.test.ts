import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startService } from '../exec.js';
import {
  computeIdSerial,
  listUsbDevices,
  mountedFilesystemsOf,
  mountRefusal,
  offerOf,
  permissionKey,
  readUsbDevice,
  showableText,
  UeventParser,
  usbDeviceMinor,
  watchUsbDevices,
  type UsbChange,
  type UsbHostDevice,
} from './devices.js';

/**
 * A fake sysfs laid out as the kernel's: /sys/devices/…/usbN/BUSID with the
 * attribute files (each ending in a newline, as sysfs writes them), the
 * interface directories BUSID:C.I, and /sys/bus/usb/devices/NAME symlinks.
 */
interface FakeInterface {
  class: string;
  subclass?: string;
  protocol?: string;
  driver?: string;
  config?: number;
  /** Attributes to leave out (a half-gone interface). */
  omit?: string[];
}

interface FakeDevice {
  busid: string;
  busnum?: string;
  devnum?: string;
  idVendor?: string;
  idProduct?: string;
  bcdDevice?: string;
  manufacturer?: string | Buffer;
  product?: string | Buffer;
  serial?: string | Buffer;
  bDeviceClass?: string;
  bConfigurationValue?: string;
  speed?: string;
  removable?: string;
  /** The node's numbers; null leaves the attribute out. */
  dev?: string | null;
  driver?: string;
  interfaces?: FakeInterface[];
  omit?: string[];
}

let root: string;
let sysfs: string;
let udevData: string;
/** Device addresses in the order devices are laid out, as a hub hands them out. */
let nextDevnum = 2;

beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'xdpvm-usb-devices-'));
  sysfs = path.join(root, 'sys');
  udevData = path.join(root, 'udev-data');
  mkdirSync(path.join(sysfs, 'bus', 'usb', 'devices'), { recursive: true });
  mkdirSync(path.join(sysfs, 'bus', 'usb', 'drivers'), { recursive: true });
  mkdirSync(udevData);
  nextDevnum = 2;
  rootHub(1);
});

afterEach(() => rmSync(root, { recursive: true, force: true }));

const attr = (dir: string, name: string, value: string | Buffer) => writeFileSync(path.join(dir, name), Buffer.isBuffer(value) ? Buffer.concat([value, Buffer.from('\n')]) : `${value}\n`);

function driverLink(dir: string, driver: string) {
  const target = path.join(sysfs, 'bus', 'usb', 'drivers', driver);
  mkdirSync(target, { recursive: true });
  symlinkSync(target, path.join(dir, 'driver'));
}

function rootHub(bus: number) {
  const dir = path.join(sysfs, 'devices', 'pci0000:00', '0000:00:14.0', `usb${bus}`);
  mkdirSync(dir, { recursive: true });
  for (const [k, v] of Object.entries({ busnum: String(bus), devnum: '1', idVendor: '1d6b', idProduct: '0002', bDeviceClass: '09', bConfigurationValue: '1', removable: 'unknown' })) attr(dir, k, v);
  symlinkSync(dir, path.join(sysfs, 'bus', 'usb', 'devices', `usb${bus}`));
}

/** Lays out one device; returns its real directory. */
function device(d: FakeDevice): string {
  const bus = d.busid.split('-')[0]!;
  const dir = path.join(sysfs, 'devices', 'pci0000:00', '0000:00:14.0', `usb${bus}`, d.busid);
  mkdirSync(dir, { recursive: true });
  const busnum = d.busnum ?? bus;
  const devnum = d.devnum ?? String(nextDevnum++);
  const attrs: Record<string, string | Buffer | undefined> = {
    busnum,
    devnum,
    idVendor: d.idVendor ?? '0000',
    idProduct: d.idProduct ?? '0000',
    bcdDevice: d.bcdDevice ?? '0100',
    manufacturer: d.manufacturer,
    product: d.product,
    serial: d.serial,
    bDeviceClass: d.bDeviceClass ?? '00',
    bConfigurationValue: d.bConfigurationValue ?? '1',
    speed: d.speed ?? '480',
    removable: d.removable ?? 'removable',
    dev: d.dev === null ? undefined : (d.dev ?? `189:${usbDeviceMinor(Number(busnum), Number(devnum))}`),
  };
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && !d.omit?.includes(k)) attr(dir, k, v);
  if (d.driver !== undefined) driverLink(dir, d.driver);
  (d.interfaces ?? []).forEach((i, n) => {
    const name = `${d.busid}:${i.config ?? 1}.${n}`;
    const ifDir = path.join(dir, name);
    mkdirSync(ifDir);
    const ifAttrs = { bInterfaceNumber: n.toString(16).padStart(2, '0'), bInterfaceClass: i.class, bInterfaceSubClass: i.subclass ?? '00', bInterfaceProtocol: i.protocol ?? '00' };
    for (const [k, v] of Object.entries(ifAttrs)) if (!i.omit?.includes(k)) attr(ifDir, k, v);
    if (i.driver) driverLink(ifDir, i.driver);
    symlinkSync(ifDir, path.join(sysfs, 'bus', 'usb', 'devices', name));
  });
  symlinkSync(dir, path.join(sysfs, 'bus', 'usb', 'devices', d.busid));
  return dir;
}

const STICK: FakeDevice = {
  busid: '1-3',
  devnum: '5',
  idVendor: '0781',
  idProduct: '5567',
  bcdDevice: '0126',
  manufacturer: ' SanDisk ',
  product: 'Cruzer Blade',
  serial: '4C530001230101117015',
  speed: '480',
  driver: 'usb',
  interfaces: [{ class: '08', subclass: '06', protocol: '50', driver: 'usb-storage' }],
};
const HUB: FakeDevice = {
  busid: '1-1',
  idVendor: '05e3',
  idProduct: '0610',
  manufacturer: 'GenesysLogic',
  product: 'USB2.1 Hub',
  bDeviceClass: '09',
  interfaces: [{ class: '09', driver: 'hub' }],
};
const BLUETOOTH: FakeDevice = {
  busid: '1-10',
  idVendor: '8087',
  idProduct: '0026',
  bDeviceClass: 'e0',
  removable: 'fixed',
  interfaces: [{ class: 'e0', subclass: '01', protocol: '01', driver: 'btusb' }],
};
const KEYBOARD: FakeDevice = {
  busid: '1-1.2',
  idVendor: '046d',
  idProduct: 'c31c',
  manufacturer: 'Logitech',
  product: 'USB Keyboard',
  speed: '1.5',
  interfaces: [
    { class: '03', subclass: '01', protocol: '01', driver: 'usbhid' },
    { class: '03', subclass: '00', protocol: '00', driver: 'usbhid' },
  ],
};

const list = () => listUsbDevices({ sysfs, udevData });
const one = (busid: string): UsbHostDevice => {
  const d = readUsbDevice(busid, { sysfs, udevData });
  if (!d) throw new Error(`${busid} was not read`);
  return d;
};

describe('listUsbDevices', () => {
  it('describes a storage stick from its attributes and offers it as mass storage', () => {
    device(STICK);
    const [stick, ...rest] = list();
    expect(rest).toEqual([]);
    expect(stick).toEqual({
      busid: '1-3',
      busnum: 1,
      devnum: 5,
      major: 189,
      minor: 4,
      vendorId: '0781',
      productId: '5567',
      bcdDevice: '0126',
      manufacturer: 'SanDisk',
      product: 'Cruzer Blade',
      serial: '4C530001230101117015',
      deviceClass: '00',
      configuration: 1,
      interfaces: [{ name: '1-3:1.0', number: 0, class: '08', subclass: '06', protocol: '50', driver: 'usb-storage' }],
      speed: '480',
      removable: 'removable',
      driver: 'usb',
      idSerial: 'SanDisk_Cruzer_Blade_4C530001230101117015',
      idSerialFrom: 'computed',
    });
    expect(permissionKey(stick!)).toBe('usb:0781/5567/SanDisk_Cruzer_Blade_4C530001230101117015');
    expect(offerOf(stick!)).toEqual({ offered: true, massStorage: true });
  });

  it('leaves out root hubs and interfaces, and orders devices by bus and port', () => {
    rootHub(2);
    device(BLUETOOTH);
    device(KEYBOARD);
    device(HUB);
    device({ ...STICK, busid: '2-1', devnum: '2' });
    device(STICK);
    expect(list().map((d) => d.busid)).toEqual(['1-1', '1-1.2', '1-3', '1-10', '2-1']);
  });

  it('refuses a hub, by its device class or by an interface, naming it as one', () => {
    device(HUB);
    device({ busid: '1-4', idVendor: '2109', idProduct: '2813', product: 'USB2.0 Hub', interfaces: [{ class: '09', driver: 'hub' }] });
    const [hub, perInterface] = list();
    expect(offerOf(hub!)).toEqual({ offered: false, massStorage: false, why: '"USB2.1 Hub" (05e3:0610) at 1-1 is a USB hub: a hub is never handed to a VM, though the devices plugged into it can be, one at a time' });
    expect(offerOf(perInterface!)).toMatchObject({ offered: false, why: expect.stringMatching(/^"USB2.0 Hub" \(2109:2813\) at 1-4 is a USB hub:/) });
  });

  it('refuses a device on a fixed (internal) port, and offers one whose port is unknown', () => {
    device(BLUETOOTH);
    device({ ...STICK, busid: '1-5', removable: 'unknown' });
    device({ ...STICK, busid: '1-6', omit: ['removable'] });
    const [unknown, absent, internal] = list();
    expect(internal).toMatchObject({ busid: '1-10', removable: 'fixed' });
    expect(offerOf(internal!)).toEqual({ offered: false, massStorage: false, why: 'USB device (8087:0026) at 1-10 is built into this computer (its port is fixed, not removable): built-in devices are never handed to a VM' });
    expect([unknown!.removable, absent!.removable]).toEqual(['unknown', 'unknown']);
    expect(offerOf(unknown!).offered).toBe(true);
  });

  it('offers a keyboard or mouse with a warning that the host loses it', () => {
    device(KEYBOARD);
    device({ busid: '1-7', idVendor: '046d', idProduct: 'c077', product: 'USB Optical Mouse', interfaces: [{ class: '03', subclass: '01', protocol: '02', driver: 'usbhid' }] });
    device({ busid: '1-8', idVendor: '046d', idProduct: 'c52b', product: 'USB Receiver', interfaces: [{ class: '03', subclass: '01', protocol: '01' }, { class: '03', subclass: '01', protocol: '02' }] });
    device({ busid: '1-9', idVendor: '28de', idProduct: '1142', product: 'Controller', interfaces: [{ class: '03', subclass: '00', protocol: '00' }] });
    const [kbd, mouse, receiver, gamepad] = list();
    expect(kbd!.interfaces.map((i) => [i.class, i.subclass, i.protocol, i.driver])).toEqual([['03', '01', '01', 'usbhid'], ['03', '00', '00', 'usbhid']]);
    expect(offerOf(kbd!)).toEqual({ offered: true, massStorage: false, warning: '"USB Keyboard" (046d:c31c) at 1-1.2 is a keyboard: while the VM has it, this computer loses that keyboard' });
    expect(offerOf(mouse!)).toMatchObject({ offered: true, warning: expect.stringMatching(/is a mouse: while the VM has it, this computer loses that mouse$/) });
    expect(offerOf(receiver!)).toMatchObject({ offered: true, warning: expect.stringMatching(/is a keyboard and mouse: .* loses that keyboard and mouse$/) });
    expect(offerOf(gamepad!)).toEqual({ offered: true, massStorage: false });
  });

  it('reads only the active configuration, and refuses a device with none yet', () => {
    device({ ...STICK, busid: '1-2', bConfigurationValue: '2', interfaces: [{ class: '08', config: 1 }, { class: 'ff', config: 2 }] });
    device({ ...KEYBOARD, busid: '1-4', bConfigurationValue: '' });
    const [twoConfigs, unconfigured] = list();
    expect(twoConfigs!.interfaces.map((i) => [i.name, i.class])).toEqual([['1-2:2.1', 'ff']]);
    expect(twoConfigs!.configuration).toBe(2);
    expect(unconfigured).toMatchObject({ configuration: undefined, interfaces: [] });
    expect(offerOf(unconfigured!)).toMatchObject({ offered: false, why: expect.stringContaining('has no active configuration yet') });
  });

  it('skips half-unplugged and malformed device directories, never throwing, and keeps the rest', () => {
    device(STICK);
    device({ busid: '1-4', idVendor: '1234', omit: ['idProduct'] });
    device({ busid: '1-5', interfaces: [{ class: '03', omit: ['bInterfaceClass'] }] });
    device({ busid: '1-6', idVendor: 'zzzz' });
    device({ busid: '1-7', busnum: 'one' });
    device({ busid: '1-8', devnum: '300' });
    device({ busid: '1-9', omit: ['bConfigurationValue'] });
    symlinkSync(path.join(sysfs, 'devices', 'gone', '1-11'), path.join(sysfs, 'bus', 'usb', 'devices', '1-11'));
    mkdirSync(path.join(sysfs, 'bus', 'usb', 'devices', '1-12'));
    expect(list().map((d) => d.busid)).toEqual(['1-3']);
    expect(readUsbDevice('1-4', { sysfs, udevData })).toBeUndefined();
    expect(readUsbDevice('../1-3', { sysfs, udevData })).toBeUndefined();
  });

  it('finds nothing, without throwing, on a host without a USB bus', () => {
    expect(listUsbDevices({ sysfs: path.join(root, 'nothing-here'), udevData })).toEqual([]);
  });

  it("caps and strips a device's strings for showing", () => {
    device({ ...STICK, manufacturer: `\x1b[31mEvil${'A'.repeat(5000)}`, product: 'Safe\u202eexe.txt\u200b', serial: 'AB\x07CD' });
    const d = one('1-3');
    expect(d.manufacturer).toBe(`[31mEvil${'A'.repeat(126 - 8)}`);
    expect(d.product).toBe('Safeexe.txt');
    expect(d.serial).toBe('ABCD');
    expect(showableText(Buffer.from([0x41, 0xff, 0x42]))).toBe('A\ufffdB');
  });
});

describe('ID_SERIAL', () => {
  /** The stick at 1-3 again, replugged with other strings. */
  const serialOf = (d: Partial<FakeDevice>) => {
    rmSync(path.join(sysfs, 'bus', 'usb', 'devices', '1-3'), { force: true });
    rmSync(path.join(sysfs, 'bus', 'usb', 'devices', '1-3:1.0'), { force: true });
    rmSync(path.join(sysfs, 'devices', 'pci0000:00', '0000:00:14.0', 'usb1', '1-3'), { recursive: true, force: true });
    device({ ...STICK, busid: '1-3', manufacturer: undefined, product: undefined, serial: undefined, ...d });
    return one('1-3');
  };

  it('is read from the udev database entry c189:MINOR when udev has one, with the minor from sysfs "dev"', () => {
    device({ ...STICK, dev: '189:4' });
    writeFileSync(path.join(udevData, 'c189:4'), 'S:bus/usb/001/005\nI:12345\nE:ID_VENDOR_ID=0781\nE:ID_MODEL_ID=5567\nE:ID_SERIAL=SanDisk_Cruzer_Blade_udev-says\nE:ID_SERIAL_SHORT=udev-says\n');
    expect(one('1-3')).toMatchObject({ idSerial: 'SanDisk_Cruzer_Blade_udev-says', idSerialFrom: 'udev' });
  });

  it("finds the database entry by the kernel's minor formula when sysfs has no dev attribute", () => {
    expect([usbDeviceMinor(1, 1), usbDeviceMinor(1, 5), usbDeviceMinor(3, 12)]).toEqual([0, 4, 267]);
    device({ ...STICK, busid: '3-2', busnum: '3', devnum: '12', dev: null });
    writeFileSync(path.join(udevData, 'c189:267'), 'E:ID_SERIAL=from-the-db\n');
    expect(one('3-2')).toMatchObject({ major: 189, minor: 267, idSerial: 'from-the-db', idSerialFrom: 'udev' });
  });

  it("ignores a database entry left by another device, or with control characters, and computes it", () => {
    device(STICK);
    writeFileSync(path.join(udevData, 'c189:4'), 'E:ID_VENDOR_ID=046d\nE:ID_MODEL_ID=c31c\nE:ID_SERIAL=Logitech_USB_Keyboard\n');
    expect(one('1-3')).toMatchObject({ idSerial: 'SanDisk_Cruzer_Blade_4C530001230101117015', idSerialFrom: 'computed' });
    writeFileSync(path.join(udevData, 'c189:4'), 'E:ID_SERIAL=bad\x1bname\n');
    expect(one('1-3').idSerialFrom).toBe('computed');
  });

  it('makes whitespace runs one "_", and every character udev does not allow "_" (valid UTF-8 stays)', () => {
    // "  ACME  Corp.\t(R) ™/Ünïcödé ": the ends trimmed, runs of blanks one "_", ( ) / each "_".
    expect(serialOf({ manufacturer: '  ACME  Corp.\t(R) \u2122/\u00dcn\u00efc\u00f6d\u00e9 ', product: 'Flash  Drive', serial: 'AB CD-01' }).idSerial).toBe(
      'ACME_Corp.__R__\u2122_\u00dcn\u00efc\u00f6d\u00e9_Flash_Drive_AB_CD-01',
    );
    expect(serialOf({ manufacturer: '#+-.:=@_ a\\x41 b\\c', product: 'p' }).idSerial).toBe('#+-.:=@__a\\x41_b_c_p');
    // Controls, DEL and bytes that are not UTF-8 are replaced byte by byte; a bidi control is valid UTF-8 and stays, as in udev.
    expect(serialOf({ manufacturer: Buffer.from([0x1b, 0x5b, 0x41, 0x7f, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0xef, 0xbf, 0xbe]), product: 'Safe\u202eexe' }).idSerial).toBe(
      `__A${'_'.repeat(10)}Safe\u202eexe`,
    );
  });

  it('falls back to idVendor and idProduct without strings, and has no "_serial" without a serial', () => {
    expect(serialOf({ idVendor: '046d', idProduct: 'c52b' }).idSerial).toBe('046d_c52b');
    expect(serialOf({ manufacturer: 'Logitech', product: 'USB Receiver' }).idSerial).toBe('Logitech_USB_Receiver');
    expect(serialOf({ manufacturer: 'Logitech', product: 'USB Receiver', serial: '' }).idSerial).toBe('Logitech_USB_Receiver');
    expect(serialOf({ manufacturer: '', product: '' }).idSerial).toBe('_');
  });

  it('drops a serial with a control character, a comma or a byte past 0x7f whole, and keeps DEL as "_"', () => {
    expect(serialOf({ manufacturer: 'V', product: 'M', serial: 'AB\tCD' }).idSerial).toBe('V_M');
    expect(serialOf({ manufacturer: 'V', product: 'M', serial: '12,34' }).idSerial).toBe('V_M');
    expect(serialOf({ manufacturer: 'V', product: 'M', serial: 'caf\u00e9' }).idSerial).toBe('V_M');
    expect(serialOf({ manufacturer: 'V', product: 'M', serial: 'AB\x7fCD' }).idSerial).toBe('V_M_AB_CD');
  });

  it("cuts vendor and model at udev's 63 bytes, even inside a character, and the whole at 255", () => {
    const a62 = 'A'.repeat(62);
    expect(serialOf({ manufacturer: `${a62}\u00e9`, product: `  ${a62}` }).idSerial).toBe(`${a62}__${'A'.repeat(61)}`);
    expect(serialOf({ manufacturer: `${a62} B`, product: 'M' }).idSerial).toBe(`${a62}_M`);
    const long = serialOf({ manufacturer: 'V', product: 'M', serial: 'S'.repeat(600) }).idSerial;
    expect(long).toBe(`V_M_${'S'.repeat(251)}`);
    expect(Buffer.byteLength(long)).toBe(255);
  });

  it('reads an attribute as sd-device does: up to its first NUL, trailing newlines and carriage returns dropped', () => {
    expect(serialOf({ manufacturer: Buffer.from('Acme\x00junk'), product: 'Disk\r\n\n' })).toMatchObject({ manufacturer: 'Acme', product: 'Disk', idSerial: 'Acme_Disk' });
  });

  it('is computed from the raw bytes, not from the cleaned text shown to the user', () => {
    const raw = { idVendor: Buffer.from('0001'), idProduct: Buffer.from('0002'), serial: undefined };
    expect(computeIdSerial({ ...raw, manufacturer: Buffer.from('Evil\u202eCorp\x1b'), product: undefined })).toBe('Evil\u202eCorp__0002');
    expect(showableText(Buffer.from('Evil\u202eCorp\x1b'))).toBe('EvilCorp');
  });
});

describe('mountedFilesystemsOf', () => {
  /** A disk with two partitions under the stick's interface, and a device-mapper holder on the second. */
  function storageTree(): void {
    const dir = device(STICK);
    const lun = path.join(dir, '1-3:1.0', 'host6', 'target6:0:0', '6:0:0:0');
    const disk = path.join(lun, 'block', 'sdb');
    mkdirSync(path.join(disk, 'sdb1'), { recursive: true });
    mkdirSync(path.join(disk, 'sdb2', 'holders'), { recursive: true });
    mkdirSync(path.join(disk, 'holders'));
    mkdirSync(path.join(disk, 'queue'));
    attr(disk, 'dev', '8:16');
    attr(path.join(disk, 'sdb1'), 'dev', '8:17');
    attr(path.join(disk, 'sdb1'), 'partition', '1');
    attr(path.join(disk, 'sdb2'), 'dev', '8:18');
    attr(path.join(disk, 'sdb2'), 'partition', '2');
    const dm = path.join(sysfs, 'devices', 'virtual', 'block', 'dm-0');
    mkdirSync(path.join(dm, 'holders'), { recursive: true });
    attr(dm, 'dev', '254:0');
    symlinkSync(dm, path.join(disk, 'sdb2', 'holders', 'dm-0'));
    mkdirSync(path.join(dir, '1-3:1.0', 'host6', 'scsi_host'), { recursive: true });
  }
  const mountinfo = (lines: string[]) => {
    const file = path.join(root, 'mountinfo');
    writeFileSync(file, `${lines.join('\n')}\n`);
    return file;
  };

  it('lists the disk, its partitions and what is stacked on them, with mount points matched by MAJOR:MINOR', () => {
    storageTree();
    const file = mountinfo([
      '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
      '36 22 8:17 / /media/user/MY\\040STICK rw,nosuid,nodev shared:52 - vfat /dev/sdb1 rw,uid=1000',
      '37 22 8:17 / /srv/bind rw shared:52 - vfat /dev/sdb1 rw',
      '40 22 254:0 / /mnt/secret rw - ext4 /dev/mapper/secret rw',
    ]);
    const blocks = mountedFilesystemsOf(one('1-3'), { sysfs, mountinfo: file });
    expect(blocks).toEqual([
      { name: 'sdb', dev: '8:16', mountPoints: [] },
      { name: 'sdb1', dev: '8:17', mountPoints: ['/media/user/MY STICK', '/srv/bind'] },
      { name: 'sdb2', dev: '8:18', mountPoints: [] },
      { name: 'dm-0', dev: '254:0', on: 'sdb2', mountPoints: ['/mnt/secret'] },
    ]);
    expect(mountRefusal(one('1-3'), blocks)).toBe(
      '"Cruzer Blade" (0781:5567) at 1-3 has filesystems mounted on this computer (sdb1 at /media/user/MY STICK, /srv/bind; dm-0 (on sdb2) at /mnt/secret): unmount them first, so nothing is lost when the VM takes the device',
    );
  });

  it('matches a filesystem that reports an anonymous device (btrfs) by its source, and none of another disk', () => {
    storageTree();
    const file = mountinfo(['22 1 8:1 / / rw - ext4 /dev/sda1 rw', '50 22 0:47 / /mnt/pool rw - btrfs /dev/sdb rw', '51 22 8:33 / /mnt/other rw - ext4 /dev/sdc1 rw']);
    const blocks = mountedFilesystemsOf(one('1-3'), { sysfs, mountinfo: file });
    expect(blocks.filter((b) => b.mountPoints.length > 0)).toEqual([{ name: 'sdb', dev: '8:16', mountPoints: ['/mnt/pool'] }]);
    expect(mountRefusal(one('1-3'), blocks)).toMatch(/\(sdb at \/mnt\/pool\): unmount it first/);
  });

  it('finds nothing mounted on an unmounted stick or a device without storage', () => {
    storageTree();
    device(KEYBOARD);
    const file = mountinfo(['22 1 8:1 / / rw - ext4 /dev/sda1 rw']);
    const stick = mountedFilesystemsOf(one('1-3'), { sysfs, mountinfo: file });
    expect(stick.map((b) => [b.name, b.mountPoints])).toContainEqual(['sdb1', []]);
    expect(mountRefusal(one('1-3'), stick)).toBeUndefined();
    expect(mountedFilesystemsOf(one('1-1.2'), { sysfs, mountinfo: file })).toEqual([]);
  });
});

describe('watchUsbDevices', () => {
  /** A stand-in udevadm that records its arguments and prints what `udevadm monitor --kernel --property` prints. */
  function fakeUdevadm(output: string, then: 'wait' | 'exit'): { file: string; argsFile: string } {
    const file = path.join(root, 'udevadm');
    const argsFile = path.join(root, 'args');
    const out = path.join(root, 'monitor-output');
    writeFileSync(out, output);
    writeFileSync(
      file,
      `#!/bin/sh\nprintf '%s\\n' "$@" > '${argsFile}'\ncat '${out}'\n${then === 'wait' ? 'exec sleep 600' : "echo 'Running in chroot, ignoring request.' >&2; exit 0"}\n`,
    );
    chmodSync(file, 0o755);
    return { file, argsFile };
  }
  const event = (action: string, devpath: string, props: Record<string, string>) =>
    [`KERNEL[1234.567890] ${action.padEnd(8)} ${devpath} (usb)`, `ACTION=${action}`, `DEVPATH=${devpath}`, ...Object.entries(props).map(([k, v]) => `${k}=${v}`), '', ''].join('\n');
  const base = '/devices/pci0000:00/0000:00:14.0/usb1';
  const usbDevice = (busnum: string, devnum: string) => ({ SUBSYSTEM: 'usb', MAJOR: '189', MINOR: '1', DEVNAME: `bus/usb/${busnum}/${devnum}`, DEVTYPE: 'usb_device', PRODUCT: '46f4/1/0', TYPE: '0/0/0', BUSNUM: busnum, DEVNUM: devnum, SEQNUM: '1000' });

  it('reports add (and bind) and remove of usb_device bus ids, and nothing else', async () => {
    const output = [
      'monitor will print the received events for:\nKERNEL - the kernel uevent\n\n',
      event('add', `${base}/1-1`, usbDevice('001', '002')),
      event('add', `${base}/1-1/1-1:1.0`, { SUBSYSTEM: 'usb', DEVTYPE: 'usb_interface', INTERFACE: '8/6/80' }),
      event('bind', `${base}/1-1`, { ...usbDevice('001', '002'), DRIVER: 'usb' }),
      event('change', `${base}/1-1`, usbDevice('001', '002')),
      `${'x'.repeat(100_000)}\n`,
      event('add', '/devices/pci0000:00/0000:00:14.0/usb2', usbDevice('002', '001')),
      event('add', `${base}/1-1/1-1.4`, usbDevice('001', '003')),
      event('remove', `${base}/1-1`, usbDevice('001', '002')),
    ].join('');
    const { file, argsFile } = fakeUdevadm(output, 'wait');
    const seen: UsbChange[] = [];
    const watch = watchUsbDevices((e) => seen.push(e), { udevadm: file });
    await watch.ready;
    try {
      await expect.poll(() => seen.length, { timeout: 5000 }).toBe(4);
    } finally {
      watch.close();
    }
    expect(seen).toEqual([
      { action: 'add', busid: '1-1' },
      { action: 'add', busid: '1-1' },
      { action: 'add', busid: '1-1.4' },
      { action: 'remove', busid: '1-1' },
    ]);
    expect(readFileSync(argsFile, 'utf8').split('\n')).toEqual(['monitor', '--kernel', '--subsystem-match=usb/usb_device', '--property', '']);
    expect((await watch.exited).signal).toBe('SIGTERM');
  });

  it('says so when the monitor ends by itself, with its reason', async () => {
    const { file } = fakeUdevadm('monitor will print the received events for:\n', 'exit');
    let ended: { code: number | null; stderr: string } | undefined;
    const watch = watchUsbDevices(() => undefined, { udevadm: file, onExit: (exit, stderr) => (ended = { code: exit.code, stderr }) });
    await expect(watch.ready).rejects.toThrow('udevadm monitor ended (0) before it listened: Running in chroot, ignoring request.');
    await watch.exited;
    expect(ended).toEqual({ code: 0, stderr: 'Running in chroot, ignoring request.' });
  });

  it('drops an event with more properties than a uevent can carry, and keeps parsing after it', () => {
    const seen: UsbChange[] = [];
    const p = new UeventParser((e) => seen.push(e));
    const feed = (text: string) => text.split('\n').forEach((l) => p.line(l));
    const flood = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`X${i}`, 'y']));
    feed(event('add', `${base}/1-2`, { ...usbDevice('001', '004'), ...flood }));
    feed(event('remove', `${base}/1-2`, usbDevice('001', '004')));
    expect(seen).toEqual([{ action: 'remove', busid: '1-2' }]);
  });
});

describe("startService's line cap", () => {
  it('drops a line over maxLineLength whole, even across chunks, and delivers the lines around it', async () => {
    const lines: string[] = [];
    const service = startService('long-lines', '/bin/sh', ['-c', "echo short; head -c 300000 /dev/zero | tr '\\0' x; echo; echo after; printf '%s\\n' 0123456789 01234567890"], {
      maxLineLength: 10,
      onStdoutLine: (l) => lines.push(l),
    });
    await service.exited;
    expect(lines).toEqual(['short', 'after', '0123456789']);
  });
});
