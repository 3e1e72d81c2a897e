import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ExecError, runProgram } from '../../src/exec.js';
import { PINNED_PORTAL_DIR, withoutOurInterfaces } from '../../src/guest/install.js';
import { cliEntry } from '../../src/paths.js';

const GTK_PORTAL = '[portal]\nDBusName=org.freedesktop.impl.portal.desktop.gtk\nInterfaces=org.freedesktop.impl.portal.FileChooser;org.freedesktop.impl.portal.AppChooser;\nUseIn=gnome\n';

function guestRoot(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'guest-root-'));
  mkdirSync(path.join(root, 'usr/share/xdg-desktop-portal/portals'), { recursive: true });
  writeFileSync(path.join(root, 'usr/share/xdg-desktop-portal/portals/gtk.portal'), GTK_PORTAL);
  return root;
}

const xdpVm = (args: string[]) => runProgram(process.execPath, [cliEntry(), ...args]);

describe('install-guest', () => {
  it('--dry-run lists every file and writes none', async () => {
    const root = guestRoot();
    const { stdout } = await xdpVm(['install-guest', '--dry-run', '--root', root, '--portal-version', '1.16.0']);
    for (const f of ['/usr/share/xdg-desktop-portal/portals/vm.portal', '/usr/share/dbus-1/services/org.freedesktop.impl.portal.desktop.vm.service', '/usr/lib/systemd/system/xdp-vm-mount.service', '/etc/environment.d/60-xdp-vm.conf']) {
      expect(stdout).toContain(f);
      expect(existsSync(path.join(root, f))).toBe(false);
    }
  });

  it('pins FileChooser for xdg-desktop-portal 1.16 by a portal folder without other FileChoosers', async () => {
    const root = guestRoot();
    await xdpVm(['install-guest', '--root', root, '--portal-version', '1.16.0', '--command', '/usr/bin/xdp-vm', '--mount-point', '/mnt/host']);
    expect(readFileSync(path.join(root, PINNED_PORTAL_DIR, 'gtk.portal'), 'utf8')).toContain('Interfaces=org.freedesktop.impl.portal.AppChooser;\n');
    expect(readFileSync(path.join(root, PINNED_PORTAL_DIR, 'vm.portal'), 'utf8')).toContain('org.freedesktop.impl.portal.FileChooser');
    expect(readFileSync(path.join(root, 'etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf'), 'utf8')).toContain(`XDG_DESKTOP_PORTAL_DIR=${PINNED_PORTAL_DIR}`);
    expect(readFileSync(path.join(root, 'usr/share/dbus-1/services/org.freedesktop.impl.portal.desktop.vm.service'), 'utf8')).toContain('Exec=/usr/bin/xdp-vm guest');
    expect(JSON.parse(readFileSync(path.join(root, 'etc/xdp-vm/guest.json'), 'utf8'))).toEqual({ mountPoint: '/mnt/host', tag: 'xdp-vm-doc' });
    expect(readFileSync(path.join(root, 'etc/environment.d/60-xdp-vm.conf'), 'utf8')).toMatch(/GTK_USE_PORTAL=1\nGDK_DEBUG=portals/);
  });

  it('needs no pinning folder from 1.17 on, where portals.conf works', async () => {
    const root = guestRoot();
    await xdpVm(['install-guest', '--root', root, '--portal-version', '1.18.4']);
    expect(existsSync(path.join(root, PINNED_PORTAL_DIR))).toBe(false);
    expect(readFileSync(path.join(root, 'etc/xdg/xdg-desktop-portal/portals.conf'), 'utf8')).toContain('org.freedesktop.impl.portal.FileChooser=vm');
  });

  it('refuses to overwrite a file it did not write, and re-installs over its own', async () => {
    const root = guestRoot();
    mkdirSync(path.join(root, 'etc/xdg/xdg-desktop-portal'), { recursive: true });
    writeFileSync(path.join(root, 'etc/xdg/xdg-desktop-portal/portals.conf'), '[preferred]\ndefault=gnome\n');
    const err = (await xdpVm(['install-guest', '--root', root, '--portal-version', '1.18.0']).catch((e: unknown) => e)) as ExecError;
    expect(err.stderr).toContain('/etc/xdg/xdg-desktop-portal/portals.conf');
    expect(readFileSync(path.join(root, 'etc/xdg/xdg-desktop-portal/portals.conf'), 'utf8')).toBe('[preferred]\ndefault=gnome\n');
    const clean = guestRoot();
    await xdpVm(['install-guest', '--root', clean, '--portal-version', '1.18.0']);
    await xdpVm(['install-guest', '--root', clean, '--portal-version', '1.18.0']);
  });

  it('refuses without the stock xdg-desktop-portal, naming the package', async () => {
    const root = guestRoot();
    const err = (await xdpVm(['install-guest', '--root', root]).catch((e: unknown) => e)) as ExecError;
    expect(err.stderr).toMatch(/xdg-desktop-portal is not installed in this VM.*apt-get install xdg-desktop-portal/);
  });

  it('uninstall-guest removes exactly what was installed', async () => {
    const root = guestRoot();
    await xdpVm(['install-guest', '--root', root, '--portal-version', '1.16.0']);
    const { stdout } = await xdpVm(['uninstall-guest', '--root', root]);
    expect(stdout).toContain('removed /usr/share/xdg-desktop-portal/portals/vm.portal');
    expect(existsSync(path.join(root, 'usr/share/xdg-desktop-portal/portals/vm.portal'))).toBe(false);
    expect(existsSync(path.join(root, 'usr/share/xdg-desktop-portal/portals/gtk.portal'))).toBe(true);
    expect(existsSync(path.join(root, 'var/lib/xdp-vm/installed-files.json'))).toBe(false);
  });

  it('installs "Open on host" for http, https and mailto, and makes it the default system-wide', async () => {
    const root = guestRoot();
    const { stdout } = await xdpVm(['install-guest', '--root', root, '--portal-version', '1.18.0', '--command', '/usr/bin/xdp-vm']);
    expect(stdout).toContain('/usr/share/applications/xdp-vm-open-on-host.desktop');
    const desktop = readFileSync(path.join(root, 'usr/share/applications/xdp-vm-open-on-host.desktop'), 'utf8');
    expect(desktop).toMatch(/^\[Desktop Entry\]$/m);
    expect(desktop).toMatch(/^Exec=\/usr\/bin\/xdp-vm open-uri %u$/m);
    expect(desktop).toMatch(/^MimeType=x-scheme-handler\/http;x-scheme-handler\/https;x-scheme-handler\/mailto;$/m);
    expect(desktop).toMatch(/^NoDisplay=true$/m);
    const mimeapps = readFileSync(path.join(root, 'etc/xdg/mimeapps.list'), 'utf8');
    expect(mimeapps).toMatch(/^\[Default Applications\]\nx-scheme-handler\/http=xdp-vm-open-on-host.desktop;\nx-scheme-handler\/https=xdp-vm-open-on-host.desktop;\nx-scheme-handler\/mailto=xdp-vm-open-on-host.desktop;$/m);
    const { stdout: removed } = await xdpVm(['uninstall-guest', '--root', root]);
    expect(removed).toContain('removed /usr/share/applications/xdp-vm-open-on-host.desktop');
    expect(removed).toContain('removed /etc/xdg/mimeapps.list');
  });

  it('leaves an admin\'s own /etc/xdg/mimeapps.list alone, and says what to add to it', async () => {
    const root = guestRoot();
    mkdirSync(path.join(root, 'etc/xdg'), { recursive: true });
    writeFileSync(path.join(root, 'etc/xdg/mimeapps.list'), '[Default Applications]\ntext/html=firefox-esr.desktop\n');
    const { stdout } = await xdpVm(['install-guest', '--root', root, '--portal-version', '1.18.0']);
    expect(stdout).toMatch(/not made the default, since \/etc\/xdg\/mimeapps.list is not ours: add x-scheme-handler\/http=xdp-vm-open-on-host.desktop/);
    expect(readFileSync(path.join(root, 'etc/xdg/mimeapps.list'), 'utf8')).toBe('[Default Applications]\ntext/html=firefox-esr.desktop\n');
    expect(existsSync(path.join(root, 'usr/share/applications/xdp-vm-open-on-host.desktop'))).toBe(true);
    await xdpVm(['uninstall-guest', '--root', root]);
    expect(existsSync(path.join(root, 'etc/xdg/mimeapps.list'))).toBe(true);
  });

  it('drops a backend that only offered FileChooser', () => {
    expect(withoutOurInterfaces('[portal]\nInterfaces=org.freedesktop.impl.portal.FileChooser;\n')).toBeUndefined();
  });
});
