import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadInterface, parseInterfaces } from '../../src/dbus/interfaces.js';

const SYSTEM = '/usr/share/dbus-1/interfaces';

describe('dbus-interfaces', () => {
  for (const name of ['org.freedesktop.impl.portal.FileChooser', 'org.freedesktop.impl.portal.Request', 'org.freedesktop.impl.portal.Settings']) {
    it(`${name} matches the upstream XML from xdg-desktop-portal-dev`, () => {
      const file = `${SYSTEM}/${name}.xml`;
      expect(existsSync(file), `${file} is missing: install xdg-desktop-portal-dev (scripts/setup.sh does)`).toBe(true);
      const upstream = parseInterfaces(readFileSync(file, 'utf8')).find((i) => i.name === name)!;
      const ours = loadInterface(name);
      const sigs = (i: typeof ours) => [...i.methods.values()].map((m) => `${m.name}(${m.inSignature})->(${m.outSignature})`).sort();
      expect(sigs(ours)).toEqual(sigs(upstream));
    });
  }

  it('our control interface parses with its methods and property', () => {
    const i = loadInterface('io.github.xdp_vm.Host1');
    expect([...i.methods.keys()].sort()).toEqual(['AddShare', 'AttachNetwork', 'AttachUsb', 'DetachNetwork', 'DetachUsb', 'ListGrants', 'ListNetworks', 'ListShares', 'ListUsbDevices', 'ListVms', 'RemoveShare', 'Revoke', 'RevokeAll']);
    expect(i.methods.get('AttachUsb')!.outSignature).toBe('ss');
    expect(i.methods.get('ListGrants')!.outSignature).toBe('a(ssaysb)');
    expect(i.properties.get('version')!.type).toBe('u');
  });

  it('the guest\'s network interface: List, Join, Leave, the Changed signal and a version', () => {
    const i = loadInterface('io.github.xdp_vm.Network1');
    expect([...i.methods.values()].map((m) => `${m.name}(${m.inSignature})->(${m.outSignature})`).sort()).toEqual(['Join(s)->(s)', 'Leave(s)->(b)', 'List()->(a(ssbs))']);
    expect(i.signals.get('Changed')!.signature).toBe('sbs');
    expect(i.properties.get('version')!.type).toBe('u');
  });

  it('the guest\'s USB interface: EnumerateDevices, AcquireDevice, ReleaseDevice, the DeviceEvents signal and a version', () => {
    const i = loadInterface('io.github.xdp_vm.Usb1');
    expect([...i.methods.values()].map((m) => `${m.name}(${m.inSignature})->(${m.outSignature})`).sort()).toEqual(['AcquireDevice(s)->(s)', 'EnumerateDevices()->(a(sa{sv}))', 'ReleaseDevice(s)->(b)']);
    expect(i.signals.get('DeviceEvents')!.signature).toBe('a(ssa{sv})');
    expect(i.properties.get('version')!.type).toBe('u');
  });
});
