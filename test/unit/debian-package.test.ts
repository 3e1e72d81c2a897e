import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MANIFEST, planInstall, SYSTEM_MIMEAPPS } from '../../src/guest/install.js';
import { debianVersion, sideDepends, verbsFromHelp } from '../../src/package/debian.js';
import { GENERATED_LIST, generatedGuestFiles, PACKAGE_MARK, PACKAGE_PIN_DIR, packagePath, pinTemplate, shippedGuestFiles } from '../../src/package/guest-files.js';
import { configureGuest, pinFiles } from '../../src/package/guest-pin.js';
import { helpToMan, roffText } from '../../src/package/man.js';

const FC = 'org.freedesktop.impl.portal.FileChooser';

function guestRoot(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'pkg-guest-'));
  const dir = path.join(root, 'usr/share/xdg-desktop-portal/portals');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'gtk.portal'), `[portal]\nDBusName=org.freedesktop.impl.portal.desktop.gtk\nInterfaces=${FC};org.freedesktop.impl.portal.AppChooser;\nUseIn=gnome\n`);
  writeFileSync(path.join(dir, 'only-fc.portal'), `[portal]\nDBusName=org.example.fc\nInterfaces=${FC};\nUseIn=x\n`);
  return root;
}

describe('man pages from --help', () => {
  const help = `Usage: xdp-vm thing [--dry-run] [--root DIR]
       xdp-vm unthing [--root DIR]

Does a thing, as root.
.Dotted lines and back\\slashes are text.

  --dry-run      list what it would do,
                 and do nothing
  --root DIR     write under DIR
  --mode M       one of:
                   a   the first
                   b   the second`;
  const roff = helpToMan({ name: 'xdp-vm-thing', names: ['xdp-vm-thing', 'xdp-vm-unthing'], section: 1, summary: 'do a thing', help, source: 'xdp-vm 1.0', date: '2025-01-02', seeAlso: ['xdp-vm(1)'] });

  it('has NAME, SYNOPSIS with every form, DESCRIPTION and OPTIONS', () => {
    expect(roff).toContain('.TH XDP-VM-THING 1 2025-01-02 "xdp-vm 1.0" "User Commands"');
    expect(roff).toContain('.SH NAME\nxdp-vm-thing, xdp-vm-unthing \\- do a thing\n');
    expect(roff).toContain('.nf\nxdp-vm thing [\\-\\-dry\\-run] [\\-\\-root DIR]\n.fi');
    expect(roff).toContain('.nf\nxdp-vm unthing [\\-\\-root DIR]\n.fi');
    expect(roff).toContain('.TP\n.B \\-\\-dry\\-run\nlist what it would do, and do nothing\n');
    expect(roff).toContain('.TP\n.B \\-\\-mode M\n.nf\none of:\n  a   the first\n  b   the second\n.fi');
  });

  it('escapes what roff would take as requests or escapes', () => {
    expect(roff).toContain('\\&.Dotted lines and back\\eslashes are text.');
    expect(roffText("'quoted")).toBe("\\&'quoted");
    expect(roffText('read-only, not --read-only')).toBe('read-only, not \\-\\-read\\-only');
  });

  it('reads the verbs and their summaries from xdp-vm --help', () => {
    expect(verbsFromHelp('xdp-vm 1: x\n\nUsage: xdp-vm VERB\n\n  host        run the host daemon\n  install-host  install it\n')).toEqual([
      { name: 'host', summary: 'run the host daemon' },
      { name: 'install-host', summary: 'install it' },
    ]);
  });
});

describe('the guest package', () => {
  it('ships every file install-guest writes for a frontend that reads portals.conf, /usr/local, the install-guest mark and the admin\'s mimeapps.list aside', () => {
    const planned = planInstall({ root: guestRoot(), command: '/usr/bin/xdp-vm', mountPoint: '/run/xdp-vm/doc', tag: 'xdp-vm-doc', portalVersion: '1.18.0' }).filter((f) => f.path !== MANIFEST && f.path !== SYSTEM_MIMEAPPS);
    expect(shippedGuestFiles().map((f) => f.path)).toContain('/usr/share/applications/xdp-vm-open-on-host.desktop');
    const shipped = shippedGuestFiles();
    expect(shipped.map((f) => f.path).sort()).toEqual(planned.map((f) => packagePath(f.path)).sort());
    expect(shipped.map((f) => f.path)).toContain('/lib/systemd/system/xdp-vm-mount.service');
    for (const f of shipped) expect(f.content, f.path).not.toMatch(/uninstall-guest|\/usr\/local/);
    expect(shipped.find((f) => f.path === '/usr/share/dbus-1/services/org.freedesktop.impl.portal.desktop.vm.service')!.content).toContain('Exec=/usr/bin/xdp-vm guest');
  });

  it("the postinst helper pins 1.16 exactly as install-guest would, in the package's own folder", () => {
    const root = guestRoot();
    const reference = generatedGuestFiles(root, '1.16.0');
    expect(reference.map((f) => f.path).sort()).toEqual([`${PACKAGE_PIN_DIR}/gtk.portal`, `${PACKAGE_PIN_DIR}/vm.portal`, '/etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf'].sort());
    expect(pinFiles(root, '1.16.0-2', pinTemplate()).sort((a, b) => a.path.localeCompare(b.path))).toEqual(
      reference.map((f) => ({ path: f.path, content: f.content })).sort((a, b) => a.path.localeCompare(b.path)),
    );
    expect(reference.find((f) => f.path.endsWith('xdp-vm.conf'))!.content).toContain(`Environment=XDG_DESKTOP_PORTAL_DIR=${PACKAGE_PIN_DIR}\n`);
    expect(pinFiles(root, '1.18.4-1', pinTemplate())).toEqual([]);
  });

  it('configure writes the pin, removes it when the frontend reads portals.conf, and never overwrites a drop-in it did not write', () => {
    const root = guestRoot();
    const quiet = () => undefined;
    const first = configureGuest(root, '1.16.0-2', pinTemplate(), quiet);
    expect(first.written).toHaveLength(3);
    expect(readFileSync(path.join(root, GENERATED_LIST), 'utf8').trim().split('\n')).toEqual(first.written);
    expect(readFileSync(path.join(root, 'etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf'), 'utf8')).toContain(PACKAGE_MARK);
    const upgraded = configureGuest(root, '1.18.4-1', pinTemplate(), quiet);
    expect(upgraded.written).toEqual([]);
    expect(upgraded.removed.sort()).toEqual([...first.written].sort());
    expect(existsSync(path.join(root, PACKAGE_PIN_DIR, 'vm.portal'))).toBe(false);

    const other = guestRoot();
    mkdirSync(path.join(other, 'etc/systemd/user/xdg-desktop-portal.service.d'), { recursive: true });
    writeFileSync(path.join(other, 'etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf'), '[Service]\n# mine\n');
    const lines: string[] = [];
    const r = configureGuest(other, '1.16.0', pinTemplate(), (l) => lines.push(l));
    expect(r.skipped).toEqual(['/etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf']);
    expect(readFileSync(path.join(other, 'etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf'), 'utf8')).toBe('[Service]\n# mine\n');
    expect(lines.join('\n')).toMatch(/not overwriting .*xdp-vm\.conf: this package did not write it/);
  });
});

describe('package metadata', () => {
  it('takes Depends from the table xdp-vm doctor checks', () => {
    const host = sideDepends('host');
    expect(host.depends).toEqual(expect.arrayContaining(['xdg-desktop-portal', 'fuse3', 'qemu-system-common']));
    expect(host.depends).not.toContain('gjs');
    expect(host.recommends).toEqual(['gjs', 'gir1.2-gtk-4.0', 'gir1.2-adw-1', 'passt']);
    expect(host.depends).not.toContain('passt');
    expect(sideDepends('guest').depends).toContain('xdg-desktop-portal');
    expect(sideDepends('host', (p) => p === 'fuse3').depends).not.toContain('fuse3');
  });

  it("turns npm's pre-release versions into ones dpkg sorts first", () => {
    expect(debianVersion('0.1.0')).toBe('0.1.0');
    expect(debianVersion('1.0.0-rc.1')).toBe('1.0.0~rc.1');
  });
});
