import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadInterface, parseInterfaces, type InterfaceDef } from '../../src/dbus/interfaces.js';

/**
 * The two interfaces the guest half serves. The portal backend's is checked
 * against xdg-desktop-portal-dev's XML, as the others in dbus-interfaces/
 * are; no package ships the notification server's, so it is checked
 * against the signatures the Desktop Notifications Specification 1.2 gives.
 */
const SYSTEM = '/usr/share/dbus-1/interfaces';
const methods = (i: InterfaceDef) => [...i.methods.values()].map((m) => `${m.name}(${m.inSignature})->(${m.outSignature})`).sort();
const signals = (i: InterfaceDef) => [...i.signals.values()].map((s) => `${s.name}(${s.signature})`).sort();

describe('Notification: the interfaces the guest half serves', () => {
  it('org.freedesktop.impl.portal.Notification matches the upstream XML from xdg-desktop-portal-dev', () => {
    const name = 'org.freedesktop.impl.portal.Notification';
    const file = `${SYSTEM}/${name}.xml`;
    expect(existsSync(file), `${file} is missing: install xdg-desktop-portal-dev (scripts/setup.sh does)`).toBe(true);
    const upstream = parseInterfaces(readFileSync(file, 'utf8')).find((i) => i.name === name)!;
    const ours = loadInterface(name);
    expect(methods(ours)).toEqual(methods(upstream));
    expect(signals(ours)).toEqual(signals(upstream));
  });

  it('org.freedesktop.Notifications has the specification\'s methods and signals', () => {
    const ours = loadInterface('org.freedesktop.Notifications');
    expect(methods(ours)).toEqual(['CloseNotification(u)->()', 'GetCapabilities()->(as)', 'GetServerInformation()->(ssss)', 'Notify(susssasa{sv}i)->(u)']);
    expect(signals(ours)).toEqual(['ActionInvoked(us)', 'NotificationClosed(uu)']);
  });
});
