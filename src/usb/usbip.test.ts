import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  attachToVhci,
  bindToUsbipHost,
  chooseVhciPort,
  detachFromVhci,
  exportableDevice,
  exportOnSocket,
  parseVhciStatus,
  stopExport,
  unbindFromUsbipHost,
  usbipHostStatus,
  UsbipError,
  vhciAttached,
  vhciPorts,
  type UsbipOptions,
} from './usbip.js';

/**
 * A fake /sys laid out as the kernel lays it out, with regular files where
 * the kernel has attributes: a write leaves its value there to be read back.
 */
let root: string;
let opts: UsbipOptions;
const sys = (rel: string) => path.join(root, rel);
const read = (rel: string) => readFileSync(sys(rel), 'utf8');
const put = (rel: string, value: string) => {
  mkdirSync(path.dirname(sys(rel)), { recursive: true });
  writeFileSync(sys(rel), value);
};

const DRIVER_FILES = ['usb/unbind', 'usbip-host/match_busid', 'usbip-host/bind', 'usbip-host/unbind', 'usbip-host/rebind'];
const written = () =>
  Object.fromEntries(
    DRIVER_FILES.map((f) => [f, read(`bus/usb/drivers/${f}`)]).filter(([, v]) => v !== ''),
  );

function device(busid: string, attrs: Record<string, string>, driver: string | undefined): void {
  for (const [k, v] of Object.entries(attrs)) put(`bus/usb/devices/${busid}/${k}`, `${v}\n`);
  if (driver) symlinkSync(`../../drivers/${driver}`, sys(`bus/usb/devices/${busid}/driver`));
}

function setDriver(busid: string, driver: string): void {
  unlinkSync(sys(`bus/usb/devices/${busid}/driver`));
  symlinkSync(`../../drivers/${driver}`, sys(`bus/usb/devices/${busid}/driver`));
}

/** A status file as vhci_sysfs.c prints it: `perHub` hs ports, then as many ss ports, for controller `c`. */
function statusText(c: number, perHub: number, used: Record<number, string> = {}): string {
  const lines = ['hub port sta spd dev      sockfd local_busid'];
  for (let i = 0; i < 2 * perHub; i++) {
    const port = c * 2 * perHub + i;
    const hub = i < perHub ? 'hs' : 'ss';
    const p = String(port).padStart(4, '0');
    lines.push(used[port] ? `${hub}  ${p} ${used[port]}` : `${hub}  ${p} 004 000 00000000 000000 0-0`);
  }
  return `${lines.join('\n')}\n`;
}

function vhci(controllers: Array<Record<number, string>>, perHub = 2): void {
  put('devices/platform/vhci_hcd.0/nports', `${controllers.length * 2 * perHub}\n`);
  controllers.forEach((used, c) => put(`devices/platform/vhci_hcd.0/status${c ? `.${c}` : ''}`, statusText(c, perHub, used)));
  put('devices/platform/vhci_hcd.0/attach', '');
  put('devices/platform/vhci_hcd.0/detach', '');
}

function error(fn: () => unknown): UsbipError {
  try {
    fn();
  } catch (err) {
    if (err instanceof UsbipError) return err;
    throw err;
  }
  throw new Error('no error');
}

beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'xdpvm-usbip-'));
  opts = { sysfs: root };
  for (const f of DRIVER_FILES) put(`bus/usb/drivers/${f}`, '');
  put('bus/usb/drivers_probe', '');
  device('1-2', { busnum: '1', devnum: '3', speed: '480' }, 'usb');
  device('2-1', { busnum: '2', devnum: '2', speed: '5000' }, undefined);
});

afterEach(() => rmSync(root, { recursive: true, force: true }));

describe('the exporting side (usbip-host)', () => {
  it("reads what the importing side needs: devid (busnum << 16 | devnum) and the speed's number", () => {
    expect(exportableDevice('1-2', opts)).toEqual({ busid: '1-2', busnum: 1, devnum: 3, devid: 0x10003, speed: 3 });
    expect(exportableDevice('2-1', opts)).toMatchObject({ devid: 0x20002, speed: 5 });
    put('bus/usb/devices/1-2/speed', '12\n');
    expect(exportableDevice('1-2', opts).speed).toBe(2);
    put('bus/usb/devices/1-2/speed', '1.5\n');
    expect(exportableDevice('1-2', opts).speed).toBe(1);
    put('bus/usb/devices/1-2/speed', '10000\n');
    expect(exportableDevice('1-2', opts).speed).toBe(6);
  });

  it('holds every attribute it reads to what the kernel writes', () => {
    put('bus/usb/devices/1-2/speed', 'unknown\n');
    expect(error(() => exportableDevice('1-2', opts)).message).toBe(`${sys('bus/usb/devices/1-2')}/speed reads "unknown\\n", not a speed vhci-hcd can attach`);
    put('bus/usb/devices/1-2/speed', '480\n');
    for (const bad of ['0', '128', '3 ', '03', '0x3', '', '3\n\n']) {
      put('bus/usb/devices/1-2/devnum', bad);
      expect(error(() => exportableDevice('1-2', opts))).toMatchObject({ kind: 'malformed', message: expect.stringContaining('not a number from 1 to 127') });
    }
    put('bus/usb/devices/1-2/devnum', `3\n${'x'.repeat(5000)}`);
    expect(error(() => exportableDevice('1-2', opts)).message).toMatch(/holds more than 4096 bytes/);
    rmSync(sys('bus/usb/devices/1-2/devnum'));
    expect(error(() => exportableDevice('1-2', opts))).toMatchObject({ kind: 'not-found', message: expect.stringMatching(/devnum is missing: the device is going away$/) });
  });

  it('takes bus ids only, so nothing outside the bus can be named', () => {
    for (const bad of ['../../x', '1-2/../1-3', 'usb1', '1-2:1.0', '-1']) {
      expect(error(() => bindToUsbipHost(bad, opts))).toMatchObject({ kind: 'not-found', message: expect.stringMatching(/is not a USB bus id: /) });
    }
    expect(error(() => exportableDevice('1-9', opts)).message).toBe(`no USB device 1-9 (no ${sys('bus/usb/devices/1-9')})`);
  });

  it("binds as usbip bind does: off its driver, into usbip-host's match table, bound", () => {
    bindToUsbipHost('1-2', opts);
    expect(written()).toEqual({ 'usb/unbind': '1-2', 'usbip-host/match_busid': 'add 1-2', 'usbip-host/bind': '1-2' });
  });

  it('binds a device no driver has without unbinding anything', () => {
    bindToUsbipHost('2-1', opts);
    expect(written()).toEqual({ 'usbip-host/match_busid': 'add 2-1', 'usbip-host/bind': '2-1' });
  });

  it('refuses a device usbip-host has, and says how to load usbip-host', () => {
    setDriver('1-2', 'usbip-host');
    expect(error(() => bindToUsbipHost('1-2', opts))).toMatchObject({ kind: 'state', message: '1-2 is already bound to usbip-host' });
    setDriver('1-2', 'usb');
    rmSync(sys('bus/usb/drivers/usbip-host'), { recursive: true });
    expect(error(() => bindToUsbipHost('1-2', opts))).toMatchObject({
      kind: 'not-loaded',
      message: 'the usbip-host driver is not loaded: run "modprobe usbip-host" as root, or list it in /etc/modules-load.d/',
    });
    expect(read('bus/usb/drivers/usb/unbind')).toBe('');
  });

  it('unbinds as usbip unbind does, giving the device back through rebind, or drivers_probe on a kernel without it', () => {
    setDriver('1-2', 'usbip-host');
    unbindFromUsbipHost('1-2', opts);
    expect(written()).toEqual({ 'usbip-host/unbind': '1-2', 'usbip-host/match_busid': 'del 1-2', 'usbip-host/rebind': '1-2' });
    rmSync(sys('bus/usb/drivers/usbip-host/rebind'));
    unbindFromUsbipHost('1-2', opts);
    expect(read('bus/usb/drivers_probe')).toBe('1-2');
    setDriver('1-2', 'usb');
    expect(error(() => unbindFromUsbipHost('1-2', opts))).toMatchObject({ kind: 'state', message: '1-2 is not bound to usbip-host' });
  });

  it('says when a write is refused, with its errno', () => {
    rmSync(sys('bus/usb/drivers/usbip-host/bind'));
    const file = sys('bus/usb/drivers/usbip-host/bind');
    expect(error(() => bindToUsbipHost('2-1', opts))).toMatchObject({ kind: 'kernel', errno: 'ENOENT', message: expect.stringMatching(new RegExp(`^writing "2-1" to ${file}: ENOENT`)) });
  });

  it("hands a socket's fd number to usbip_sockfd only while the device is available, and stops with -1 only while it is used", () => {
    device('1-4', { busnum: '1', devnum: '5', speed: '480', usbip_status: '1', usbip_sockfd: '' }, 'usbip-host');
    expect(usbipHostStatus('1-4', opts)).toBe('available');
    expect(error(() => stopExport('1-4', opts))).toMatchObject({ kind: 'state', message: '1-4 is not exported on a connection' });
    exportOnSocket('1-4', 7, opts);
    expect(read('bus/usb/devices/1-4/usbip_sockfd')).toBe('7');
    put('bus/usb/devices/1-4/usbip_status', '2\n');
    expect(error(() => exportOnSocket('1-4', 8, opts))).toMatchObject({ kind: 'state', message: '1-4 is already exported on a connection: stop that one first' });
    stopExport('1-4', opts);
    expect(read('bus/usb/devices/1-4/usbip_sockfd')).toBe('-1');
    put('bus/usb/devices/1-4/usbip_status', '3\n');
    expect(error(() => exportOnSocket('1-4', 8, opts)).message).toBe("1-4 is in usbip-host's error state: unbind it and bind it again");
    put('bus/usb/devices/1-4/usbip_status', '4\n');
    expect(error(() => usbipHostStatus('1-4', opts)).kind).toBe('malformed');
    expect(error(() => usbipHostStatus('1-2', opts))).toMatchObject({ kind: 'state', message: `1-2 is not bound to usbip-host (no ${sys('bus/usb/devices/1-2/usbip_status')})` });
    expect(error(() => exportOnSocket('1-4', -1, opts)).message).toBe('-1 is not a file descriptor');
  });

  it("words the kernel's refusal of a socket", () => {
    device('1-4', { busnum: '1', devnum: '5', speed: '480', usbip_status: '1' }, 'usbip-host');
    symlinkSync('/dev/full', sys('bus/usb/devices/1-4/usbip_sockfd'));
    expect(error(() => exportOnSocket('1-4', 7, opts))).toMatchObject({ kind: 'kernel', errno: 'ENOSPC', message: expect.stringMatching(/^usbip-host did not take fd 7 for 1-4: the kernel answered ENOSPC; writing "7" to /) });
  });
});

describe("vhci-hcd's status files", () => {
  const USED = '006 003 00010003 000005 3-1';

  it('parses the hs ports, then the ss ports, numbered per controller as the kernel numbers them', () => {
    const ports = parseVhciStatus(statusText(1, 2, { 4: USED }), 1);
    expect(ports).toEqual([
      { controller: 1, hub: 'hs', port: 4, state: 'used', speed: 3, devid: 0x10003, sockfd: 5, localBusid: '3-1' },
      { controller: 1, hub: 'hs', port: 5, state: 'free', speed: 0, devid: 0, sockfd: 0, localBusid: undefined },
      { controller: 1, hub: 'ss', port: 6, state: 'free', speed: 0, devid: 0, sockfd: 0, localBusid: undefined },
      { controller: 1, hub: 'ss', port: 7, state: 'free', speed: 0, devid: 0, sockfd: 0, localBusid: undefined },
    ]);
    expect(parseVhciStatus(statusText(0, 1, { 0: '005 003 00010003 000005 0-0' }), 0)[0]).toMatchObject({ state: 'not-assigned', localBusid: undefined });
  });

  it("parses a not-ready controller's lines, whose socket is 16 zeros", () => {
    const text = 'hub port sta spd dev      sockfd local_busid\nhs  0000 005 000 00000000 0000000000000000 0-0\nss  0001 005 000 00000000 0000000000000000 0-0\n';
    expect(parseVhciStatus(text, 0).map((p) => p.state)).toEqual(['not-assigned', 'not-assigned']);
  });

  it('refuses anything the kernel does not write', () => {
    const good = statusText(0, 2);
    const cases: Array<[string, RegExp]> = [
      [good.replace('hub port', 'hub prt'), /the header is/],
      [good.slice(0, -1), /does not end with a newline/],
      [good.replace('hs  0001', 'ss  0001'), /line 3 is ss port 1 where the kernel puts hs port 1/],
      [good.replace('ss  0003', 'ss  0004'), /ss port 4 where the kernel puts ss port 3/],
      [good.replace('hs  0000 004', 'hs  0000 009'), /port 0 has status 9, not one of vhci-hcd's/],
      [good.replace('hs  0000 004 000', 'hs  0000 004 007'), /port 0 has speed 7/],
      [good.replace('hs  0000 004 000 00000000 000000 0-0', `hs  0000 ${USED.replace('3-1', '0-0')}`), /port 0 is used and names 0-0/],
      [good.replace('hs  0000 004 000 00000000 000000 0-0', 'hs  0000 004 000 00000000 000000 3-1'), /port 0 is free and names 3-1/],
      [good.replace('hs  0000 004 000 00000000 000000 0-0', `hs  0000 ${USED.replace('3-1', '../x')}`), /port 0 names device "\.\.\/x"/],
      [good.replace('hs  0000 004 000 00000000 000000 0-0', `hs  0000 ${USED.replace('3-1', 'usb1')}`), /port 0 names device "usb1"/],
      [good.replace('00000000 000000 0-0\n', '00000000 000000 0-0 extra\n'), /line 2 is/],
      [good.split('\n').slice(0, 4).join('\n') + '\n', /3 port lines, not an even number/],
    ];
    for (const [text, why] of cases) {
      expect(error(() => parseVhciStatus(text, 0))).toMatchObject({ kind: 'malformed', message: expect.stringMatching(why) });
    }
  });

  it('reads every controller, checked against nports', () => {
    vhci([{ 1: USED }, {}]);
    expect(vhciPorts(opts).map((p) => `${p.controller}${p.hub}${p.port}${p.state[0]}`)).toEqual(['0hs0f', '0hs1u', '0ss2f', '0ss3f', '1hs4f', '1hs5f', '1ss6f', '1ss7f']);
    expect(vhciAttached(opts)).toEqual([{ controller: 0, hub: 'hs', port: 1, state: 'used', speed: 3, devid: 0x10003, sockfd: 5, localBusid: '3-1' }]);
    put('devices/platform/vhci_hcd.0/nports', '16\n');
    expect(error(() => vhciPorts(opts)).message).toBe(`${sys('devices/platform/vhci_hcd.0')}/nports says 16 ports, its status files list 8`);
  });

  it('says how to load vhci-hcd when it is not loaded', () => {
    expect(error(() => vhciPorts(opts))).toMatchObject({
      kind: 'not-loaded',
      message: `the vhci-hcd driver is not loaded (no ${sys('devices/platform/vhci_hcd.0')}): run "modprobe vhci-hcd" as root, or list it in /etc/modules-load.d/`,
    });
  });
});

describe('attaching and detaching on vhci-hcd', () => {
  const USED = (speed: number) => `006 00${speed} 00010003 000005 3-1`;

  it('puts SuperSpeed devices on the ss hub and every slower one on the hs hub, on the first free port', () => {
    vhci([{ 0: USED(3) }, {}]);
    const ports = vhciPorts(opts);
    expect([1, 2, 3, 4].map((s) => chooseVhciPort(ports, s).port)).toEqual([1, 1, 1, 1]);
    expect([5, 6].map((s) => chooseVhciPort(ports, s).port)).toEqual([2, 2]);
  });

  it("moves on to the next controller, and says so when the hub's every port is taken", () => {
    vhci([{ 2: USED(5), 3: USED(5) }, { 6: USED(5) }]);
    expect(chooseVhciPort(vhciPorts(opts), 5).port).toBe(7);
    vhci([{ 2: USED(5), 3: USED(5) }, { 6: USED(5), 7: USED(5) }]);
    expect(error(() => chooseVhciPort(vhciPorts(opts), 5))).toMatchObject({
      kind: 'no-free-port',
      message: "no free port on vhci-hcd's SuperSpeed hub: all 4 are in use; detach a device first",
    });
    expect(chooseVhciPort(vhciPorts(opts), 3).port).toBe(0);
  });

  it('writes PORT SOCKFD DEVID SPEED to attach, the devid in decimal', () => {
    vhci([{ 0: USED(3) }]);
    expect(attachToVhci({ sockfd: 12, devid: 0x10003, speed: 3 }, opts)).toEqual({ controller: 0, hub: 'hs', port: 1 });
    expect(read('devices/platform/vhci_hcd.0/attach')).toBe('1 12 65539 3');
    attachToVhci({ sockfd: 9, devid: 0x20002, speed: 5 }, opts);
    expect(read('devices/platform/vhci_hcd.0/attach')).toBe('2 9 131074 5');
  });

  it('checks what it writes', () => {
    vhci([{}]);
    expect(error(() => attachToVhci({ sockfd: 12, devid: 1, speed: 0 }, opts)).message).toBe('speed 0 is not one vhci-hcd takes (1, 2, 3, 4, 5, 6)');
    expect(error(() => attachToVhci({ sockfd: 12, devid: 2 ** 32, speed: 3 }, opts)).message).toBe(`devid ${2 ** 32} is not a 32-bit number`);
    expect(error(() => attachToVhci({ sockfd: 1.5, devid: 1, speed: 3 }, opts)).message).toBe('1.5 is not a file descriptor');
    expect(read('devices/platform/vhci_hcd.0/attach')).toBe('');
  });

  it("words the kernel's refusal of an attach", () => {
    vhci([{}]);
    rmSync(sys('devices/platform/vhci_hcd.0/attach'));
    symlinkSync('/dev/full', sys('devices/platform/vhci_hcd.0/attach'));
    expect(error(() => attachToVhci({ sockfd: 12, devid: 1, speed: 3 }, opts))).toMatchObject({
      kind: 'kernel',
      errno: 'ENOSPC',
      message: expect.stringMatching(/^vhci-hcd did not attach fd 12 on port 0: the kernel answered ENOSPC; writing "0 12 1 3" to /),
    });
  });

  it('detaches a port that has a device, and only such a port', () => {
    vhci([{ 1: USED(3) }]);
    detachFromVhci(1, opts);
    expect(read('devices/platform/vhci_hcd.0/detach')).toBe('1');
    expect(error(() => detachFromVhci(0, opts))).toMatchObject({ kind: 'state', message: 'vhci-hcd port 0 has nothing attached' });
    expect(error(() => detachFromVhci(4, opts))).toMatchObject({ kind: 'not-found', message: 'vhci-hcd has no port 4 (ports 0 to 3)' });
  });
});
