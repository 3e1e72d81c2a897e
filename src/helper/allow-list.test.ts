import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../paths.js';
import { ownershipProblem, parseAllowList } from './allow-list.js';

const FILE = '/etc/xdp-vm/helper.conf';

function problems(text: string): string[] {
  try {
    parseAllowList(text, FILE);
  } catch (err) {
    return (err as { problems: string[] }).problems;
  }
  throw new Error('expected the allow list to be refused');
}

describe('allow-list parser', () => {
  it('reads bridge and usb rules with users, uids and groups, ignoring comments and blank lines', () => {
    const list = parseAllowList(
      ['# who may use what', '', 'bridge alice br0 virbr0   # the lab', '  bridge @kvm br-lab', 'usb 1000 046D:C52B 0781:*', 'usb @plugdev class:08 class:0E'].join('\n'),
      FILE,
    );
    expect(list.bridges).toEqual([
      { line: 3, subject: { kind: 'user', name: 'alice' }, bridges: ['br0', 'virbr0'] },
      { line: 4, subject: { kind: 'group', name: 'kvm' }, bridges: ['br-lab'] },
    ]);
    expect(list.usb).toEqual([
      { line: 5, subject: { kind: 'uid', uid: 1000 }, matches: [{ kind: 'id', vendor: '046d', product: 'c52b' }, { kind: 'id', vendor: '0781', product: '*' }] },
      { line: 6, subject: { kind: 'group', name: 'plugdev' }, matches: [{ kind: 'class', code: '08' }, { kind: 'class', code: '0e' }] },
    ]);
  });

  it('an empty file, or only comments, allows nothing', () => {
    expect(parseAllowList('', FILE)).toEqual({ file: FILE, bridges: [], vmOnly: [], usb: [] });
    expect(parseAllowList('# bridge alice br0\n\n', FILE)).toEqual({ file: FILE, bridges: [], vmOnly: [], usb: [] });
  });

  it('the sample allow list in data/ parses and allows nothing', () => {
    const text = readFileSync(path.join(packageRoot(), 'data', 'helper.conf'), 'utf8');
    expect(parseAllowList(text, FILE)).toEqual({ file: FILE, bridges: [], vmOnly: [], usb: [] });
  });

  it('names every bad line by its number, and refuses the whole file', () => {
    expect(
      problems(
        [
          'bridge alice br0', // 1: fine, but the file is refused anyway
          'brdige alice br0',
          'bridge',
          'bridge alice',
          'bridge alice br0/../x',
          'bridge alice averyveryverylongname',
          'bridge -rf br0',
          'usb alice 046d',
          'usb alice class:09',
          'usb @ class:08',
          'usb 99999999999 class:08',
          'bridge alice -br0',
        ].join('\n'),
      ),
    ).toEqual([
      'line 2: unknown rule "brdige": a rule is "bridge WHO BRIDGE...", "vm-only WHO BRIDGE ADDR/LEN" or "usb WHO MATCH..."',
      'line 3: "bridge" names nobody: bridge WHO BRIDGE...',
      'line 4: "bridge alice" names no bridge',
      'line 5: "br0/../x" is not a bridge name: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"',
      'line 6: "averyveryverylongname" is not a bridge name: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"',
      'line 7: "-rf" is not a user name, a uid or @group',
      'line 8: "046d" is not a USB match: VVVV:PPPP, VVVV:* or class:CC, in hex',
      'line 9: class:09 is hubs, and hubs are never handed to a VM',
      'line 10: "@" is not a group: @ then a group name',
      'line 11: "99999999999" is not a user name, a uid or @group',
      'line 12: "-br0" is not a bridge name: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"',
    ]);
  });

  it('reads vm-only rules: one bridge and the host address the admin gives it', () => {
    const list = parseAllowList('vm-only alice xdpvm-lab 10.77.0.1/24\nvm-only @kvm xdpvm-lab 10.77.0.1/24\nvm-only 1000 lab2 192.168.99.254/30', FILE);
    expect(list.vmOnly).toEqual([
      { line: 1, subject: { kind: 'user', name: 'alice' }, bridge: 'xdpvm-lab', address: '10.77.0.1', prefix: 24 },
      { line: 2, subject: { kind: 'group', name: 'kvm' }, bridge: 'xdpvm-lab', address: '10.77.0.1', prefix: 24 },
      { line: 3, subject: { kind: 'uid', uid: 1000 }, bridge: 'lab2', address: '192.168.99.254', prefix: 30 },
    ]);
  });

  it('refuses a vm-only rule with no address, a bad one, or a bridge given two addresses or also used as an existing bridge', () => {
    expect(
      problems(
        [
          'vm-only alice lab',
          'vm-only alice lab 10.77.0.1',
          'vm-only alice lab 10.77.0.1/8',
          'vm-only alice lab 10.77.0.0/24',
          'vm-only alice lab 10.77.0.255/24',
          'vm-only alice lab 127.0.0.2/24',
          'vm-only alice lab 10.77.0.1/24 extra',
          'vm-only alice lab 10.77.0.1/24',
          'vm-only bob lab 10.88.0.1/24',
          'bridge carol lab',
        ].join('\n'),
      ),
    ).toEqual([
      'line 1: "vm-only" takes one bridge and the host\'s address on it: vm-only WHO BRIDGE ADDR/LEN',
      'line 2: "10.77.0.1" is not an address for the bridge: A.B.C.D/LEN with LEN 16 to 30, e.g. 10.77.0.1/24',
      'line 3: "10.77.0.1/8" is not an address for the bridge: A.B.C.D/LEN with LEN 16 to 30, e.g. 10.77.0.1/24',
      'line 4: 10.77.0.0/24 is the network address of its subnet, not a host\'s',
      'line 5: 10.77.0.255/24 is the broadcast address of its subnet, not a host\'s',
      'line 6: 127.0.0.2/24 is not a unicast address a bridge can have',
      'line 7: "vm-only" takes one bridge and the host\'s address on it: vm-only WHO BRIDGE ADDR/LEN',
      'line 9: vm-only bridge lab is given 10.88.0.1/24 here but 10.77.0.1/24 on line 8: one bridge has one address',
      'line 8: lab is a vm-only bridge here but an existing bridge on line 10: the helper makes vm-only bridges itself, so one name cannot be both',
    ]);
  });

  it('quotes hostile text printably', () => {
    expect(problems('bridge alice br\x1b[2J')).toEqual([
      'line 1: "br\\u{1b}[2J" is not a bridge name: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"',
    ]);
  });
});

describe('allow-list ownership', () => {
  it('accepts a root-owned file that only root can write', () => {
    expect(ownershipProblem('the file', { uid: 0, mode: 0o100644 }, false)).toBeUndefined();
    expect(ownershipProblem('the file', { uid: 0, mode: 0o100600 }, false)).toBeUndefined();
  });

  it('refuses a file owned by anyone else, or writable by group or others', () => {
    expect(ownershipProblem('the file', { uid: 1000, mode: 0o100644 }, false)).toBe('the file is owned by uid 1000, not root');
    expect(ownershipProblem('the file', { uid: 0, mode: 0o100664 }, false)).toBe('the file is writable by its group (mode 0664)');
    expect(ownershipProblem('the file', { uid: 0, mode: 0o100646 }, false)).toBe('the file is writable by others (mode 0646)');
  });

  it('accepts a sticky world-writable directory like /tmp, but not a plain one', () => {
    expect(ownershipProblem('its directory /tmp', { uid: 0, mode: 0o41777 }, true)).toBeUndefined();
    expect(ownershipProblem('its directory /srv', { uid: 0, mode: 0o40777 }, true)).toBe('its directory /srv is writable by its group (mode 0777)');
    expect(ownershipProblem('the file', { uid: 0, mode: 0o101666 }, false)).toBe('the file is writable by its group (mode 1666)');
  });
});
