import { describe, expect, it } from 'vitest';
import { parseAllowList } from './allow-list.js';
import { parseCommand } from './commands.js';
import { decideBridge, decideUsb, decideVmOnly, effectiveClasses, type Caller, type UsbDevice } from './decide.js';

const FILE = '/etc/xdp-vm/helper.conf';
const list = parseAllowList(
  ['bridge alice br0', 'bridge @kvm virbr0', 'bridge 4242 br-lab', 'usb alice 046d:c52b 0781:*', 'usb @plugdev class:08', 'usb @plugdev class:03'].join('\n'),
  FILE,
);
const alice: Caller = { uid: 1000, user: 'alice', groups: ['alice', 'kvm'] };
const bob: Caller = { uid: 1001, user: 'bob', groups: ['bob', 'plugdev'] };
const nameless: Caller = { uid: 4242, user: undefined, groups: [] };
const stranger: Caller = { uid: 1002, user: 'carol', groups: ['carol'] };

function usb(over: Partial<UsbDevice>): UsbDevice {
  return { busid: '1-2', vendor: '1234', product: '5678', deviceClass: '00', interfaceClasses: ['08'], ...over };
}

describe('bridge decisions', () => {
  it('allows a bridge named for the user, for one of their groups, or for their uid, and says which rule', () => {
    expect(decideBridge(list, alice, 'br0')).toEqual({ allowed: true, rule: `${FILE}:1: bridge alice br0` });
    expect(decideBridge(list, alice, 'virbr0')).toEqual({ allowed: true, rule: `${FILE}:2: bridge @kvm virbr0` });
    expect(decideBridge(list, nameless, 'br-lab')).toEqual({ allowed: true, rule: `${FILE}:3: bridge 4242 br-lab` });
  });

  it('refuses any other bridge, naming the ones the user may use', () => {
    expect(decideBridge(list, alice, 'br-lab')).toEqual({ allowed: false, reason: `uid 1000 (alice) may not use bridge br-lab: ${FILE} allows this user br0, virbr0 only` });
  });

  it('default deny: a user no rule names gets nothing', () => {
    expect(decideBridge(list, stranger, 'br0')).toEqual({ allowed: false, reason: `uid 1002 (carol) may not use bridge br0: no "bridge" or "vm-only" rule in ${FILE} names this user or their groups` });
    expect(decideBridge(parseAllowList('', FILE), alice, 'br0').allowed).toBe(false);
  });
});

describe('vm-only decisions', () => {
  const lab = parseAllowList('bridge alice br0\nvm-only alice xdpvm-lab 10.77.0.1/24\nvm-only @plugdev xdpvm-dev 10.78.0.1/24', FILE);

  it('gives the bridge with the admin\'s address, and allows taps on it', () => {
    expect(decideVmOnly(lab, alice, 'xdpvm-lab')).toEqual({ allowed: true, rule: `${FILE}:2: vm-only alice xdpvm-lab 10.77.0.1/24`, address: '10.77.0.1', prefix: 24 });
    expect(decideBridge(lab, alice, 'xdpvm-lab')).toEqual({ allowed: true, rule: `${FILE}:2: vm-only alice xdpvm-lab 10.77.0.1/24` });
    expect(decideBridge(lab, bob, 'xdpvm-dev').allowed).toBe(true);
  });

  it('refuses a vm-only bridge the user has no rule for, and an existing bridge is not a vm-only one', () => {
    expect(decideVmOnly(lab, alice, 'xdpvm-dev')).toEqual({ allowed: false, reason: `uid 1000 (alice) may not bring up vm-only bridge xdpvm-dev: ${FILE} gives this user vm-only xdpvm-lab only` });
    expect(decideVmOnly(lab, alice, 'br0').allowed).toBe(false);
    expect(decideVmOnly(lab, stranger, 'xdpvm-lab')).toEqual({ allowed: false, reason: `uid 1002 (carol) may not bring up vm-only bridge xdpvm-lab: no "vm-only" rule in ${FILE} names this user or their groups` });
    expect(decideBridge(lab, alice, 'xdpvm-dev')).toEqual({ allowed: false, reason: `uid 1000 (alice) may not use bridge xdpvm-dev: ${FILE} allows this user br0, xdpvm-lab only` });
  });
});

describe('USB decisions', () => {
  it('allows a vendor:product pair, or any product of a vendor', () => {
    expect(decideUsb(list, alice, usb({ vendor: '046d', product: 'c52b', interfaceClasses: ['03'] }))).toEqual({ allowed: true, rule: `${FILE}:4: usb alice 046d:c52b 0781:*` });
    expect(decideUsb(list, alice, usb({ vendor: '0781', product: '5581' })).allowed).toBe(true);
    expect(decideUsb(list, alice, usb({ vendor: '046d', product: 'c52c', interfaceClasses: ['03'] }))).toEqual({
      allowed: false,
      reason: `uid 1000 (alice) may not use USB device 046d:c52c (class 03) at 1-2: ${FILE} allows this user 046d:c52b, 0781:* only`,
    });
  });

  it('allows by class only when every interface is of an allowed class', () => {
    expect(decideUsb(list, bob, usb({ interfaceClasses: ['08'] }))).toEqual({ allowed: true, rule: `${FILE}:5: usb @plugdev class:08` });
    expect(decideUsb(list, bob, usb({ interfaceClasses: ['08', '03'] })).allowed).toBe(true);
    expect(decideUsb(list, bob, usb({ interfaceClasses: ['08', 'ff'] }))).toEqual({
      allowed: false,
      reason: `uid 1001 (bob) may not use USB device 1234:5678 (class 08+ff) at 1-2: ${FILE} allows this user class:08, class:03 only`,
    });
    expect(decideUsb(list, bob, usb({ deviceClass: '08', interfaceClasses: ['ff'] })).allowed).toBe(true);
  });

  it('refuses hubs whatever the rules say', () => {
    const hub = usb({ vendor: '046d', product: 'c52b', deviceClass: '09', interfaceClasses: ['09'] });
    expect(decideUsb(list, alice, hub)).toEqual({ allowed: false, reason: '1-2 is a USB hub: hubs are never handed to a VM' });
    expect(decideUsb(list, alice, usb({ vendor: '046d', product: 'c52b', interfaceClasses: ['03', '09'] })).allowed).toBe(false);
  });

  it('default deny for USB too', () => {
    expect(decideUsb(list, stranger, usb({}))).toEqual({ allowed: false, reason: `uid 1002 (carol) may not use USB device 1234:5678 (class 08) at 1-2: no "usb" rule in ${FILE} names this user or their groups` });
  });

  it('judges a composite (class ef) device by its interfaces', () => {
    expect(effectiveClasses(usb({ deviceClass: 'ef', interfaceClasses: ['0e', '01', '0e'] }))).toEqual(['0e', '01']);
    expect(effectiveClasses(usb({ deviceClass: 'ff', interfaceClasses: ['08'] }))).toEqual(['ff']);
  });
});

describe('command set', () => {
  it('takes exactly its commands with one valid argument each', () => {
    expect(parseCommand(['tap-create', 'br0'])).toEqual({ name: 'tap-create', arg: 'br0' });
    expect(parseCommand(['tap-delete', 'xdpvm12'])).toEqual({ name: 'tap-delete', arg: 'xdpvm12' });
    expect(parseCommand(['usb-bind', '1-2.3'])).toEqual({ name: 'usb-bind', arg: '1-2.3' });
    expect(parseCommand(['usb-open', '12-1.4.2'])).toEqual({ name: 'usb-open', arg: '12-1.4.2' });
    expect(parseCommand(['vm-only-up', 'xdpvm-lab'])).toEqual({ name: 'vm-only-up', arg: 'xdpvm-lab' });
  });

  it('refuses anything else with a precise message', () => {
    const msg = (words: string[]) => {
      try {
        parseCommand(words);
      } catch (err) {
        return (err as Error).message;
      }
      return 'accepted';
    };
    expect(msg(['tap-up', 'br0'])).toBe('unknown command "tap-up": the helper\'s commands are tap-create BRIDGE, tap-delete TAP, tap-open TAP, vm-only-up BRIDGE, usb-bind BUSID, usb-unbind BUSID, usb-open BUSID, usb-export BUSID');
    expect(msg(['__proto__', 'x'])).toMatch(/^unknown command "__proto__"/);
    expect(msg([])).toMatch(/^no command: /);
    expect(msg(['tap-create'])).toBe('tap-create takes exactly one argument, BRIDGE; got 0');
    expect(msg(['tap-create', 'br0', 'br1'])).toBe('tap-create takes exactly one argument, BRIDGE; got 2');
    expect(msg(['tap-create', '-n'])).toBe('tap-create: "-n" is not a valid BRIDGE: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"');
    expect(msg(['tap-create', 'br0 type veth'])).toMatch(/^tap-create: "br0 type veth" is not a valid BRIDGE/);
    expect(msg(['tap-create', '..'])).toMatch(/is not a valid BRIDGE/);
    expect(msg(['tap-create', 'a234567890123456'])).toMatch(/is not a valid BRIDGE/);
    expect(msg(['tap-delete', 'eth0'])).toBe('tap-delete: "eth0" is not a valid TAP: the helper\'s taps are named xdpvm0 to xdpvm9999');
    expect(msg(['tap-delete', 'xdpvm01'])).toMatch(/is not a valid TAP/);
    expect(msg(['usb-bind', 'usb1'])).toBe('usb-bind: "usb1" is not a valid BUSID: a USB bus id is BUS-PORT[.PORT]..., e.g. 1-2 or 3-1.4');
    expect(msg(['usb-bind', '1-2/../../x'])).toMatch(/is not a valid BUSID/);
    expect(msg(['usb-open', '1-2:1.0'])).toMatch(/is not a valid BUSID/);
    expect(msg(['usb-unbind', '1-0'])).toMatch(/is not a valid BUSID/);
  });
});
