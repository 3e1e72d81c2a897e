import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chooseBackend, installDirsOf, isBusName, isInterfaceName, parseEnviron, rulesFor, type FrontendFacts } from './portal-backend.js';

/**
 * Backend selection against scratch install trees, one rule set per upstream
 * release range. Each expectation is what that release's own source does
 * (see the header of portal-backend.ts for the files).
 */
const FC = 'org.freedesktop.impl.portal.FileChooser';
let root: string;

beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'xdp-vm-portals-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const datadir = () => path.join(root, 'usr', 'share');
const sysconfdir = () => path.join(root, 'etc');

function write(rel: string, text: string): string {
  const p = path.join(root, rel);
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, text);
  return p;
}

/** A backend's .portal file in ${datadir}, or under `dir` (relative to the scratch root). */
function portal(name: string, opts: { useIn?: string; ifaces?: string[]; bus?: string; dir?: string } = {}): string {
  const lines = ['[portal]', `DBusName=${opts.bus ?? `org.freedesktop.impl.portal.desktop.${name}`}`, `Interfaces=${(opts.ifaces ?? [FC]).join(';')};`];
  if (opts.useIn !== undefined) lines.push(`UseIn=${opts.useIn}`);
  return write(path.join(opts.dir ?? 'usr/share/xdg-desktop-portal/portals', `${name}.portal`), `${lines.join('\n')}\n`);
}

function facts(version: string, env: Record<string, string> = {}): FrontendFacts {
  return {
    version,
    datadir: datadir(),
    sysconfdir: sysconfdir(),
    // Never the machine's own /usr/share or /etc/xdg.
    env: { HOME: path.join(root, 'home'), XDG_DATA_DIRS: path.join(root, 'data-dirs'), XDG_CONFIG_DIRS: path.join(root, 'config-dirs'), ...env },
  };
}

function picked(version: string, env: Record<string, string> = {}): string {
  const c = chooseBackend(FC, facts(version, env));
  return c.kind === 'backend' ? c.dbusName.replace('org.freedesktop.impl.portal.desktop.', '') : `unsure: ${c.why}`;
}

describe('which versions we claim', () => {
  it.each([
    ['1.16.0', 'xdg-desktop-portal 1.16.0'],
    ['1.18.4', 'xdg-desktop-portal 1.18.4'],
    ['1.20.3', 'xdg-desktop-portal 1.19.1–1.20.x'],
    ['1.22.1', 'xdg-desktop-portal 1.21.2–1.22.x'],
  ])('%s has rules', (v, name) => expect(rulesFor(v)?.name).toBe(name));

  it.each(['1.16.1', '1.17.0', '1.18.2', '1.19.0', '1.21.1', '1.23.0', '2.0.0', 'x'])('%s is not checked: unsure', (v) => {
    portal('gtk', { useIn: 'gnome' });
    expect(picked(v, { XDG_CURRENT_DESKTOP: 'GNOME' })).toMatch(/^unsure: .*has not been checked/);
  });
});

describe('1.16.0: UseIn against XDG_CURRENT_DESKTOP', () => {
  it('matches UseIn case-insensitively, for any entry of the colon-separated list', () => {
    portal('gnome', { useIn: 'gnome' });
    portal('kde', { useIn: 'KDE' });
    expect(picked('1.16.0', { XDG_CURRENT_DESKTOP: 'ubuntu:GNOME' })).toBe('gnome');
    expect(picked('1.16.0', { XDG_CURRENT_DESKTOP: 'kde' })).toBe('kde');
  });

  it('takes the earlier desktop of the list first', () => {
    portal('gnome', { useIn: 'gnome' });
    portal('kde', { useIn: 'KDE' });
    expect(picked('1.16.0', { XDG_CURRENT_DESKTOP: 'KDE:GNOME' })).toBe('kde');
  });

  it('falls back to any backend offering FileChooser, first by file name', () => {
    portal('zeta', { useIn: 'x' });
    portal('alpha', { useIn: 'y' });
    portal('print', { useIn: 'sway', ifaces: ['org.freedesktop.impl.portal.Print'] });
    expect(picked('1.16.0', { XDG_CURRENT_DESKTOP: 'sway' })).toBe('alpha');
    expect(picked('1.16.0')).toBe('alpha');
  });

  it('skips what the frontend refuses: no UseIn, a bad bus name, a non-backend interface', () => {
    portal('a', {});
    portal('b', { useIn: 'sway', bus: 'not a name' });
    portal('c', { useIn: 'sway', ifaces: [FC, 'org.example.Thing'] });
    portal('d', { useIn: 'other' });
    expect(picked('1.16.0', { XDG_CURRENT_DESKTOP: 'sway' })).toBe('d');
  });

  it('reads only XDG_DESKTOP_PORTAL_DIR when it is set', () => {
    portal('gtk', { useIn: 'gnome' });
    portal('scripted', { useIn: 'scripted', dir: 'test-portals' });
    expect(picked('1.16.0', { XDG_CURRENT_DESKTOP: 'gnome', XDG_DESKTOP_PORTAL_DIR: path.join(root, 'test-portals') })).toBe('scripted');
  });

  it('is unsure about a file it cannot read the way GLib would', () => {
    portal('gtk', { useIn: 'gnome' });
    write('usr/share/xdg-desktop-portal/portals/broken.portal', '[portal\nDBusName=x.y\n');
    expect(picked('1.16.0', { XDG_CURRENT_DESKTOP: 'gnome' })).toMatch(/^unsure: .*broken\.portal does not parse/);
  });

  it('is unsure when nothing offers FileChooser', () => {
    portal('print', { useIn: 'gnome', ifaces: ['org.freedesktop.impl.portal.Print'] });
    expect(picked('1.16.0', { XDG_CURRENT_DESKTOP: 'gnome' })).toMatch(/^unsure: no installed backend/);
  });

  it('is unsure when a file changed after the frontend started: it has not seen it', () => {
    const file = portal('gtk', { useIn: 'gnome' });
    const started = Date.now() - 60_000;
    utimesSync(file, new Date(started - 60_000), new Date(started - 60_000));
    utimesSync(path.dirname(file), new Date(started - 60_000), new Date(started - 60_000));
    expect(chooseBackend(FC, { ...facts('1.16.0', { XDG_CURRENT_DESKTOP: 'gnome' }), startedAtMs: started })).toMatchObject({ kind: 'backend' });
    utimesSync(file, new Date(), new Date());
    expect(chooseBackend(FC, { ...facts('1.16.0', { XDG_CURRENT_DESKTOP: 'gnome' }), startedAtMs: started })).toMatchObject({ kind: 'unsure', why: expect.stringContaining('changed after the frontend started') });
  });
});

describe('portals.conf (1.18.4 and later)', () => {
  const conf = (rel: string, body: string) => write(rel, `[preferred]\n${body}\n`);

  it('looks in XDG_CONFIG_HOME, then XDG_CONFIG_DIRS, then ${sysconfdir}, then the data directories', () => {
    for (const n of ['gnome', 'kde', 'gtk', 'wlr']) portal(n, { useIn: n });
    conf('data-dirs/xdg-desktop-portal/portals.conf', 'default=wlr');
    expect(picked('1.20.3')).toBe('wlr');
    conf('etc/xdg-desktop-portal/portals.conf', 'default=gtk');
    expect(picked('1.20.3')).toBe('gtk');
    conf('config-dirs/xdg-desktop-portal/portals.conf', 'default=kde');
    expect(picked('1.20.3')).toBe('kde');
    conf('home/.config/xdg-desktop-portal/portals.conf', 'default=gnome');
    expect(picked('1.20.3')).toBe('gnome');
    expect(picked('1.20.3', { XDG_CONFIG_HOME: path.join(root, 'elsewhere') })).toBe('kde');
  });

  it('prefers <desktop>-portals.conf to portals.conf in the same directory, for the first desktop that has one', () => {
    for (const n of ['gnome', 'kde', 'gtk']) portal(n);
    conf('etc/xdg-desktop-portal/portals.conf', 'default=gtk');
    conf('etc/xdg-desktop-portal/kde-portals.conf', 'default=kde');
    conf('etc/xdg-desktop-portal/gnome-portals.conf', 'default=gnome');
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'ubuntu:GNOME:KDE' })).toBe('gnome');
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'KDE' })).toBe('kde');
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'sway' })).toBe('gtk');
  });

  it('lets the interface key beat default, takes the first listed backend that exists, and skips one that lacks the interface', () => {
    portal('gnome');
    portal('gtk');
    portal('wlr', { ifaces: ['org.freedesktop.impl.portal.Screenshot'] });
    conf('etc/xdg-desktop-portal/portals.conf', `default=gnome\n${FC}=missing;wlr;gtk;gnome`);
    expect(picked('1.20.3')).toBe('gtk');
    expect(picked('1.22.1')).toBe('gtk');
  });

  it('1.18.4 takes the first listed backend in its own sorted order, not the file\'s', () => {
    portal('gnome');
    portal('kde');
    conf('etc/xdg-desktop-portal/portals.conf', `${FC}=kde;gnome`);
    expect(picked('1.18.4')).toBe('gnome');
    expect(picked('1.20.3')).toBe('kde');
  });

  it('"none" disables the interface: unsure, so the frontend answers as it does', () => {
    portal('gtk');
    conf('etc/xdg-desktop-portal/portals.conf', `default=gtk\n${FC}=none`);
    expect(picked('1.20.3')).toMatch(/^unsure: .*disabled.*"none"/);
  });

  it('"default=*" means any backend from 1.21.2 on; up to 1.20 it finds none, and UseIn decides', () => {
    portal('alpha');
    portal('beta', { useIn: 'sway' });
    conf('etc/xdg-desktop-portal/portals.conf', 'default=*');
    expect(picked('1.22.1', { XDG_CURRENT_DESKTOP: 'sway' })).toBe('beta');
    write('etc/xdg-desktop-portal/portals.conf', '[preferred]\ndefault=*\n');
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'sway' })).toBe('beta');
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'other' })).toMatch(/^unsure: no installed backend/);
    expect(picked('1.22.1', { XDG_CURRENT_DESKTOP: 'other' })).toBe('alpha');
  });

  it('up to 1.20 the first file found decides alone; from 1.21.2 a file that does not decide passes on to the next', () => {
    portal('gnome');
    portal('kde', { useIn: 'kde' });
    conf('home/.config/xdg-desktop-portal/portals.conf', 'org.freedesktop.impl.portal.Print=gnome');
    conf('etc/xdg-desktop-portal/portals.conf', `${FC}=gnome`);
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'KDE' })).toBe('kde');
    expect(picked('1.22.1', { XDG_CURRENT_DESKTOP: 'KDE' })).toBe('gnome');
  });

  it('without any portals.conf uses UseIn, then falls back to the GTK backend', () => {
    portal('gtk', { useIn: 'gnome' });
    portal('kde', { useIn: 'KDE' });
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'KDE' })).toBe('kde');
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'sway' })).toBe('gtk');
    rmSync(path.join(datadir(), 'xdg-desktop-portal/portals/gtk.portal'));
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'sway' })).toMatch(/^unsure: no installed backend/);
  });

  it('from 1.20.1, portals come from XDG_DATA_HOME and XDG_DATA_DIRS too, and the first of a name wins', () => {
    portal('gtk', { bus: 'org.freedesktop.impl.portal.desktop.gtk', useIn: 'gnome' });
    portal('gtk', { bus: 'org.example.user.gtk', useIn: 'gnome', dir: 'home/.local/share/xdg-desktop-portal/portals' });
    const env = { XDG_CURRENT_DESKTOP: 'GNOME' };
    expect(chooseBackend(FC, facts('1.20.3', env))).toMatchObject({ dbusName: 'org.example.user.gtk' });
    expect(chooseBackend(FC, facts('1.20.0', env))).toMatchObject({ dbusName: 'org.freedesktop.impl.portal.desktop.gtk' });
  });

  it('ignores desktop names that are not [A-Za-z0-9_-]', () => {
    portal('gnome');
    portal('gtk');
    conf('etc/xdg-desktop-portal/gnome-portals.conf', 'default=gnome');
    conf('etc/xdg-desktop-portal/portals.conf', 'default=gtk');
    expect(picked('1.20.3', { XDG_CURRENT_DESKTOP: 'gno me:../gnome' })).toBe('gtk');
  });

  it('is unsure of directories that would depend on the frontend\'s working directory', () => {
    portal('gtk');
    expect(picked('1.20.3', { XDG_CONFIG_DIRS: 'relative/xdg' })).toMatch(/^unsure: XDG_CONFIG_DIRS is "relative\/xdg"/);
  });
});

describe('reading the frontend', () => {
  it('parses /proc/<pid>/environ', () => {
    expect(parseEnviron('A=1\0XDG_CURRENT_DESKTOP=ubuntu:GNOME\0B=x=y\0')).toEqual({ A: '1', XDG_CURRENT_DESKTOP: 'ubuntu:GNOME', B: 'x=y' });
  });

  it('knows the data and config directories only of distribution layouts', () => {
    expect(installDirsOf('/usr/libexec/xdg-desktop-portal')).toEqual({ datadir: '/usr/share', sysconfdir: '/etc' });
    expect(installDirsOf('/usr/lib/xdg-desktop-portal')).toEqual({ datadir: '/usr/share', sysconfdir: '/etc' });
    expect(installDirsOf('/opt/xdp/libexec/xdg-desktop-portal')).toBeUndefined();
  });

  it('checks names as GDBus does', () => {
    expect(isBusName('org.freedesktop.impl.portal.desktop.gtk')).toBe(true);
    expect(isBusName('org.example-x.a_b')).toBe(true);
    expect(isBusName(':1.42')).toBe(true);
    expect(isBusName('org.1x')).toBe(false);
    expect(isBusName('single')).toBe(false);
    expect(isInterfaceName('org.freedesktop.impl.portal.FileChooser')).toBe(true);
    expect(isInterfaceName('org.example-x.A')).toBe(false);
  });
});
