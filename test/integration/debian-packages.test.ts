import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEPENDENCIES, whichProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { MANIFEST } from '../../src/guest/install.js';
import { buildDebianPackages, COMMON_PACKAGE, essentialPackages, GUEST_PACKAGE, HOST_PACKAGE, LIB_DIR, verbsFromHelp, type BuiltPackage } from '../../src/package/debian.js';
import { GENERATED_LIST, PACKAGE_PIN_DIR } from '../../src/package/guest-files.js';
import { lintian } from '../../src/package/lintian.js';
import { cliEntry, packageRoot } from '../../src/paths.js';

/**
 * `npm run package`: the three .debs built into a scratch folder, checked by
 * lintian, unpacked and run, and the guest package installed with dpkg into
 * a scratch root (`dpkg --root`, its maintainer scripts run with DPKG_ROOT)
 * whose dpkg database says xdg-desktop-portal 1.16 is installed.
 */
let scratch: string;
let built: BuiltPackage[];
const VERSION = (JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
const deb = (name: string) => built.find((b) => b.name === name)!.file;
const field = async (name: string, f: string) => (await runProgram('dpkg-deb', ['-f', deb(name), f])).stdout.trim();
const FC = 'org.freedesktop.impl.portal.FileChooser';

beforeAll(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), 'xdp-vm-deb-'));
  built = await buildDebianPackages({ outDir: path.join(scratch, 'out'), workDir: path.join(scratch, 'work'), log: () => undefined });
}, 180_000);
afterAll(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('the packages', () => {
  it('are three, versioned from package.json', () => {
    expect(built.map((b) => path.basename(b.file)).sort()).toEqual([
      `${COMMON_PACKAGE}_${VERSION}_${built.find((b) => b.name === COMMON_PACKAGE)!.architecture}.deb`,
      `${GUEST_PACKAGE}_${VERSION}_all.deb`,
      `${HOST_PACKAGE}_${VERSION}_all.deb`,
    ]);
  });

  it('depend on what each half runs: Node.js 18.20 for the guest, 20.19 for the host', async () => {
    expect(await field(COMMON_PACKAGE, 'Depends')).toMatch(/^nodejs \(>= 18\.20\), libc6 \(>= [\d.]+\)$/);
    const host = (await field(HOST_PACKAGE, 'Depends')).split(', ');
    expect(host.slice(0, 2)).toEqual([`${COMMON_PACKAGE} (= ${VERSION})`, 'nodejs (>= 20.19)']);
    expect(host).toEqual(expect.arrayContaining(['xdg-desktop-portal', 'fuse3', 'qemu-system-common', 'default-dbus-session-bus | dbus-session-bus']));
    // Every host program `xdp-vm doctor` checks comes from a package the host package depends on, or an Essential one.
    const essential = await essentialPackages(DEPENDENCIES.flatMap((d) => d.debianPackage.split(' ')));
    const recommends = (await field(HOST_PACKAGE, 'Recommends')).split(', ');
    for (const d of DEPENDENCIES.filter((x) => x.side === 'host' || x.side === 'both')) {
      for (const p of d.debianPackage.split(' ')) expect(essential.has(p) || host.includes(p) || recommends.includes(p), `${d.id}: ${p}`).toBe(true);
    }
    for (const p of essential) expect(host).not.toContain(p);
    expect(await field(HOST_PACKAGE, 'Recommends')).toBe('gjs, gir1.2-gtk-4.0, gir1.2-adw-1, passt');
    expect(await field(GUEST_PACKAGE, 'Depends')).toBe(`${COMMON_PACKAGE} (= ${VERSION}), nodejs (>= 18.20), xdg-desktop-portal (>= 1.16), default-dbus-session-bus | dbus-session-bus`);
  });

  it('lintian reports no errors and no warnings', async () => {
    if (!whichProgram(['lintian'])) throw new Error('lintian is not installed: run scripts/setup.sh tests');
    const report = await lintian(built.map((b) => b.file));
    expect(report.lines.filter((l) => /^[EW]: /.test(l))).toEqual([]);
  }, 300_000);
});

describe('the common package, unpacked', () => {
  let root: string;
  const xdpVm = (args: string[], env: Record<string, string> = {}) => runProgram(process.execPath, [path.join(root, 'usr/bin/xdp-vm'), ...args], { env: { HOME: '/home/alice', ...env } });

  beforeAll(async () => {
    root = path.join(scratch, 'common');
    for (const name of [COMMON_PACKAGE, HOST_PACKAGE]) await runProgram('dpkg-deb', ['-x', deb(name), root]);
  });

  it('runs from its own tree: /usr/bin/xdp-vm is the bundle, with its data files and addon', async () => {
    expect(readlinkSync(path.join(root, 'usr/bin/xdp-vm'))).toBe(`../lib/xdg-desktop-portal-vm/dist/bundle/xdp-vm.mjs`);
    expect(readFileSync(path.join(root, LIB_DIR, 'dist/bundle/xdp-vm.mjs'), 'utf8').split('\n')[0]).toBe('#!/usr/bin/node --max-semi-space-size=4');
    expect((await xdpVm(['--version'])).stdout.trim()).toBe(VERSION);
    const guestRoot = path.join(scratch, 'dry-guest');
    mkdirSync(path.join(guestRoot, 'usr/share/xdg-desktop-portal/portals'), { recursive: true });
    expect((await xdpVm(['install-guest', '--dry-run', '--root', guestRoot, '--portal-version', '1.16.0'])).stdout).toContain('/usr/share/xdg-desktop-portal/portals/vm.portal');
    expect((await xdpVm(['install-host', '--dry-run', '--root', path.join(scratch, 'dry-host')])).stdout).toContain('/home/alice/.config/xdp-vm/config.json');
  });

  it('has a man page for xdp-vm and for every verb', async () => {
    const verbs = verbsFromHelp((await runProgram(process.execPath, [cliEntry(), '--help'])).stdout);
    expect(verbs.length).toBeGreaterThan(5);
    const pages = readdirSync(path.join(root, 'usr/share/man/man1'));
    expect(pages.sort()).toEqual(['xdp-vm.1.gz', ...verbs.map((v) => `xdp-vm-${v.name}.1.gz`)].sort());
    const { stdout } = await runProgram('man', ['-l', path.join(root, 'usr/share/man/man1/xdp-vm-host.1.gz')], { env: { MANWIDTH: '100', MAN_DISABLE_SECCOMP: '1' } });
    expect(stdout).toMatch(/--no-shares\s+do not start virtiofsd/);
  });

  it('the host package has the user unit and D-Bus activation running /usr/bin/xdp-vm, and the skeleton as an example', () => {
    expect(readFileSync(path.join(root, 'usr/lib/systemd/user/xdp-vm-host.service'), 'utf8')).toContain('ExecStart=/usr/bin/xdp-vm host\n');
    expect(readFileSync(path.join(root, 'usr/share/dbus-1/services/io.github.xdp_vm.Host.service'), 'utf8')).toContain('Name=io.github.xdp_vm.Host\nExec=/usr/bin/xdp-vm host\n');
    expect(existsSync(path.join(root, 'usr/share/doc', HOST_PACKAGE, 'examples/config.json'))).toBe(true);
    expect(existsSync(path.join(root, LIB_DIR, 'dist/dialogs/consent/main.js'))).toBe(true);
  });
});

describe('the guest package, installed by dpkg into a scratch root', () => {
  let root: string;
  const dpkg = (args: string[]) =>
    runProgram('dpkg', [`--root=${root}`, '--force-script-chrootless', '--force-not-root', '--log=/dev/null', ...args], { timeoutMs: 120_000, env: { PATH: process.env.PATH } });
  const read = (p: string) => readFileSync(path.join(root, p), 'utf8');
  const has = (p: string) => existsSync(path.join(root, p));

  /** A fake backend package: dpkg's file trigger on the portal folder fires for it. */
  async function backendDeb(name: string, portal: string): Promise<string> {
    const dir = path.join(scratch, `pkg-${name}`);
    mkdirSync(path.join(dir, 'DEBIAN'), { recursive: true });
    mkdirSync(path.join(dir, 'usr/share/xdg-desktop-portal/portals'), { recursive: true });
    writeFileSync(path.join(dir, 'DEBIAN/control'), `Package: ${name}\nVersion: 1\nArchitecture: all\nMaintainer: Test <test@example.org>\nDescription: a test backend\n`);
    writeFileSync(path.join(dir, `usr/share/xdg-desktop-portal/portals/${name}.portal`), portal);
    const out = path.join(scratch, `${name}.deb`);
    await runProgram('dpkg-deb', ['--root-owner-group', '--build', dir, out]);
    return out;
  }

  function fakeRoot(): string {
    const r = mkdtempSync(path.join(scratch, 'root-'));
    for (const d of ['var/lib/dpkg/info', 'var/lib/dpkg/updates', 'var/lib/dpkg/triggers', 'usr/share/xdg-desktop-portal/portals']) mkdirSync(path.join(r, d), { recursive: true });
    writeFileSync(path.join(r, 'var/lib/dpkg/available'), '');
    // What the packages depend on, as a Debian 12 guest has it.
    const installed = [['xdg-desktop-portal', '1.16.0-2'], ['nodejs', '18.20.4+dfsg-1~deb12u3'], ['libc6', '2.36-9+deb12u9'], ['default-dbus-session-bus', '1']];
    writeFileSync(
      path.join(r, 'var/lib/dpkg/status'),
      installed.map(([p, v]) => `Package: ${p}\nStatus: install ok installed\nPriority: optional\nSection: misc\nMaintainer: Test <test@example.org>\nArchitecture: all\nVersion: ${v}\nDescription: stand-in\n`).join('\n'),
    );
    for (const [p] of installed) writeFileSync(path.join(r, `var/lib/dpkg/info/${p}.list`), '');
    writeFileSync(path.join(r, 'usr/share/xdg-desktop-portal/portals/gtk.portal'), `[portal]\nDBusName=org.freedesktop.impl.portal.desktop.gtk\nInterfaces=${FC};org.freedesktop.impl.portal.AppChooser;\nUseIn=gnome\n`);
    return r;
  }

  beforeAll(async () => {
    root = fakeRoot();
    await dpkg(['-i', deb(COMMON_PACKAGE), deb(GUEST_PACKAGE)]);
  }, 120_000);

  it('holds what install-guest writes, its /etc files as conffiles', async () => {
    for (const f of ['usr/share/xdg-desktop-portal/portals/vm.portal', 'usr/share/dbus-1/services/org.freedesktop.impl.portal.desktop.vm.service', 'usr/lib/systemd/user/xdp-vm-guest.service', 'lib/systemd/system/xdp-vm-mount.service', 'etc/xdp-vm/guest.json']) {
      expect(has(f), f).toBe(true);
    }
    expect(read('etc/xdg/xdg-desktop-portal/portals.conf')).toContain(`${FC}=vm`);
    expect(read('usr/share/dbus-1/services/org.freedesktop.impl.portal.desktop.vm.service')).toContain('Exec=/usr/bin/xdp-vm guest');
    const { stdout } = await runProgram('dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f=${Conffiles}', GUEST_PACKAGE]);
    expect(stdout.trim().split('\n').map((l) => l.trim().split(' ')[0]).sort()).toEqual(['/etc/environment.d/60-xdp-vm.conf', '/etc/profile.d/xdp-vm.sh', '/etc/xdg/xdg-desktop-portal/portals.conf', '/etc/xdp-vm/guest.json']);
  });

  it('its postinst pins the VM backend for xdg-desktop-portal 1.16, as install-guest does', () => {
    expect(read(`${PACKAGE_PIN_DIR}/vm.portal`)).toContain(`Interfaces=${FC};`);
    expect(read(`${PACKAGE_PIN_DIR}/gtk.portal`)).toContain('Interfaces=org.freedesktop.impl.portal.AppChooser;\n');
    expect(read('etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf')).toContain(`Environment=XDG_DESKTOP_PORTAL_DIR=${PACKAGE_PIN_DIR}\n`);
  });

  it('a backend installed later is pinned too, by the trigger', async () => {
    await dpkg(['-i', await backendDeb('kde', `[portal]\nDBusName=org.freedesktop.impl.portal.desktop.kde\nInterfaces=${FC};org.freedesktop.impl.portal.Print;\nUseIn=KDE\n`)]);
    expect(read(`${PACKAGE_PIN_DIR}/kde.portal`)).toContain('Interfaces=org.freedesktop.impl.portal.Print;\n');
    expect(read(GENERATED_LIST)).toContain(`${PACKAGE_PIN_DIR}/kde.portal`);
  });

  it('purge leaves nothing behind, and the other backends as they were', async () => {
    await dpkg(['--purge', GUEST_PACKAGE]);
    for (const f of [PACKAGE_PIN_DIR, GENERATED_LIST, 'etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf', 'etc/xdp-vm/guest.json', 'usr/share/xdg-desktop-portal/portals/vm.portal']) expect(has(f), f).toBe(false);
    expect(has('usr/share/xdg-desktop-portal/portals/gtk.portal')).toBe(true);
  });

  it('refuses to install over a guest side that install-guest wrote', async () => {
    const other = fakeRoot();
    mkdirSync(path.join(other, path.dirname(MANIFEST)), { recursive: true });
    writeFileSync(path.join(other, MANIFEST), '{"files":[]}\n');
    root = other;
    await dpkg(['-i', deb(COMMON_PACKAGE)]);
    const err = (await dpkg(['-i', deb(GUEST_PACKAGE)]).catch((e: unknown) => e)) as Error;
    expect(err.message).toMatch(/run `xdp-vm uninstall-guest` first/);
    expect(has('usr/share/xdg-desktop-portal/portals/vm.portal')).toBe(false);
  });
});
