import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MANIFEST as INSTALL_GUEST_MANIFEST, PINNED_PORTAL_DIR, planInstall, SYSTEM_MIMEAPPS, type PlannedFile } from '../guest/install.js';

/**
 * What the guest .deb holds, and what its postinst writes, both taken from
 * install-guest's own plan (src/guest/install.ts), so the package and
 * `xdp-vm install-guest` install the same guest side:
 *
 * - every file whose content does not depend on the guest (vm.portal,
 *   portals.conf, the D-Bus activation file, the units, guest.json, the
 *   session environment) is shipped in the package, /etc ones as conffiles;
 * - the rest (for xdg-desktop-portal 1.16: the pinned portal folder, built
 *   from the other backends installed, and the drop-in that points the
 *   frontend at it) is written by the postinst, again on a trigger whenever
 *   a backend or the frontend changes, and removed with the package.
 *
 * Policy keeps packages out of /usr/local, so the pinned folder moves to
 * /var/lib/xdg-desktop-portal-vm/portals.
 */
export const GUEST_PACKAGE = 'xdg-desktop-portal-vm-guest';
export const STATE_DIR = '/var/lib/xdg-desktop-portal-vm';
export const PACKAGE_PIN_DIR = `${STATE_DIR}/portals`;
/** What the postinst wrote, one path a line (postrm reads it in shell, with the helper gone). */
export const GENERATED_LIST = `${STATE_DIR}/generated-files`;
export const PACKAGE_MARK = `# Written by the ${GUEST_PACKAGE} package; removed with it.`;
export const COMMAND = '/usr/bin/xdp-vm';
export { INSTALL_GUEST_MANIFEST };

const INSTALL_GUEST_MARK = /^# Installed by xdp-vm install-guest;.*$/m;

/**
 * Where a planned path goes in the package. Debian 12 (the oldest release
 * the guest supports) ships system units in /lib/systemd/system: dpkg there
 * does not yet know that /usr/lib and /lib are one folder.
 */
export function packagePath(p: string): string {
  if (p.startsWith('/usr/lib/systemd/system/')) return p.replace(/^\/usr/, '');
  if (p.startsWith(`${PINNED_PORTAL_DIR}/`)) return `${PACKAGE_PIN_DIR}/${p.slice(PINNED_PORTAL_DIR.length + 1)}`;
  return p;
}

function forPackage(f: PlannedFile): PlannedFile {
  return { ...f, path: packagePath(f.path), content: f.content.replace(INSTALL_GUEST_MARK, PACKAGE_MARK).replaceAll(PINNED_PORTAL_DIR, PACKAGE_PIN_DIR) };
}

/**
 * /etc/xdg/mimeapps.list is the admin's, and often another package's: the
 * package ships the "Open on host" handler but does not make it the default
 * (install-guest does, when that file is not someone else's).
 */
function plan(root: string, portalVersion: string): PlannedFile[] {
  return planInstall({ root, command: COMMAND, mountPoint: '/run/xdp-vm/doc', tag: 'xdp-vm-doc', portalVersion }).filter((f) => f.path !== INSTALL_GUEST_MANIFEST && f.path !== SYSTEM_MIMEAPPS);
}

/** The guest-independent files: what the package ships (planned for a frontend that needs no pinning, on an empty root). */
export function shippedGuestFiles(): PlannedFile[] {
  const empty = mkdtempSync(path.join(tmpdir(), 'xdp-vm-guest-plan-'));
  try {
    return plan(empty, '1.99.0').map(forPackage);
  } finally {
    rmSync(empty, { recursive: true, force: true });
  }
}

/** What the postinst writes for this guest: the plan for its frontend, less what the package ships. */
export function generatedGuestFiles(root: string, portalVersion: string): PlannedFile[] {
  const shipped = new Set(shippedGuestFiles().map((f) => f.path));
  return plan(root, portalVersion)
    .map(forPackage)
    .filter((f) => !shipped.has(f.path));
}

/**
 * What the postinst helper needs to know, fixed at build time, so that the
 * helper itself stays a few kilobytes without the CLI's dependencies: our
 * interfaces, the pinned vm.portal, and the drop-in. The guest-dependent rest
 * (the other backends' .portal files, the frontend's version) it reads on
 * the guest; src/package/guest-pin.ts.
 */
export interface PinTemplate {
  interfaces: string[];
  pinDir: string;
  vmPortal: string;
  dropIn: { path: string; content: string };
  stateDir: string;
  list: string;
  mark: string;
  packageName: string;
}

export function pinTemplate(): PinTemplate {
  const empty = mkdtempSync(path.join(tmpdir(), 'xdp-vm-guest-plan-'));
  try {
    const files = generatedGuestFiles(empty, '1.16.0');
    const vmPortal = files.find((f) => f.path === `${PACKAGE_PIN_DIR}/vm.portal`);
    const dropIn = files.filter((f) => !f.path.startsWith(`${PACKAGE_PIN_DIR}/`));
    if (!vmPortal || dropIn.length !== 1) throw new Error(`install-guest's 1.16 plan changed shape (${files.map((f) => f.path).join(', ')}): update src/package/guest-pin.ts`);
    const interfaces = /^Interfaces=(.*)$/m.exec(vmPortal.content)![1]!.split(';').filter(Boolean);
    return { interfaces, pinDir: PACKAGE_PIN_DIR, vmPortal: vmPortal.content, dropIn: { path: dropIn[0]!.path, content: dropIn[0]!.content }, stateDir: STATE_DIR, list: GENERATED_LIST, mark: PACKAGE_MARK, packageName: GUEST_PACKAGE };
  } finally {
    rmSync(empty, { recursive: true, force: true });
  }
}
