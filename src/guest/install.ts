import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DEFAULT_SERIAL_PORT_NAME } from '../config/schema.js';
import { renderDataFile } from '../data-files.js';
import { GUEST_INTERFACES } from '../../portals/index.js';
import { OPEN_ON_HOST_DESKTOP_ID, OPEN_ON_HOST_MIME_TYPES } from '../../portals/open-uri/handler.js';
import { GuestConfig, GUEST_CONFIG_PATH } from './guest-config.js';

/**
 * What `xdp-vm install-guest` writes into a VM, computed as a plan first so
 * `--dry-run` shows exactly the files, and `uninstall-guest` removes exactly
 * what the manifest says was installed.
 */
export interface PlannedFile {
  path: string;
  content: string;
  why: string;
}

export interface InstallOptions {
  /** Write under this directory as if it were / (tests, image builders). */
  root: string;
  /** The xdp-vm command the activation file and units run. */
  command: string;
  mountPoint: string;
  tag: string;
  /** Version of the guest's xdg-desktop-portal, e.g. "1.16.0". */
  portalVersion: string;
  transport?: string;
}

export const MANIFEST = '/var/lib/xdp-vm/installed-files.json';
export const PINNED_PORTAL_DIR = '/usr/local/share/xdp-vm/portals';
const SYSTEM_PORTAL_DIR = '/usr/share/xdg-desktop-portal/portals';
const MARK = '# Installed by xdp-vm install-guest; `xdp-vm uninstall-guest` removes it.';

export function portalVersionAtLeast(version: string, major: number, minor: number): boolean {
  const [a = 0, b = 0] = version.split('.').map(Number);
  return a > major || (a === major && b >= minor);
}

/** vm.portal: our backend and the interfaces of every portal it serves. */
export function vmPortalFile(): string {
  return renderDataFile('vm.portal.in', { INTERFACES: GUEST_INTERFACES.map((i) => `${i};`).join('') });
}

/** portals.conf for xdg-desktop-portal >= 1.17: each of our interfaces pinned to the vm backend. */
export function portalsConf(): string {
  return renderDataFile('portals.conf.in', { PINNED: GUEST_INTERFACES.map((i) => `${i}=vm`).join('\n') });
}

/** A backend's .portal file with our interfaces taken out, so only ours can serve them; undefined if nothing is left. */
export function withoutOurInterfaces(portalFile: string): string | undefined {
  const m = /^Interfaces=(.*)$/m.exec(portalFile);
  if (!m) return portalFile;
  const kept = m[1]!.split(';').filter((i) => i && !GUEST_INTERFACES.includes(i));
  if (kept.length === 0) return undefined;
  return portalFile.replace(m[0], `Interfaces=${kept.join(';')};`);
}

function pinFor116(root: string): PlannedFile[] {
  const files: PlannedFile[] = [
    { path: `${PINNED_PORTAL_DIR}/vm.portal`, content: vmPortalFile(), why: 'the VM backend, in the portal folder the 1.16 frontend is pointed at' },
  ];
  const systemDir = path.join(root, SYSTEM_PORTAL_DIR);
  for (const name of existsSync(systemDir) ? readdirSync(systemDir).filter((n) => n.endsWith('.portal') && n !== 'vm.portal') : []) {
    const filtered = withoutOurInterfaces(readFileSync(path.join(systemDir, name), 'utf8'));
    if (filtered) files.push({ path: `${PINNED_PORTAL_DIR}/${name}`, content: filtered, why: `${name} without the interfaces the VM backend serves` });
  }
  files.push({
    path: '/etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf',
    content: `${MARK}\n# xdg-desktop-portal 1.16 ignores portals.conf: give it a portal folder where\n# only the VM backend implements the interfaces it serves.\n[Service]\nEnvironment=XDG_DESKTOP_PORTAL_DIR=${PINNED_PORTAL_DIR}\n`,
    why: 'points the 1.16 frontend at that folder',
  });
  return files;
}

export const OPEN_ON_HOST_DESKTOP_FILE = `/usr/share/applications/${OPEN_ON_HOST_DESKTOP_ID}`;
export const SYSTEM_MIMEAPPS = '/etc/xdg/mimeapps.list';

/** The "Open on host" link handler, and the system-wide default that makes it the VM's handler for links (what qvm-open-in-vm users set). */
function linkHandler(root: string, vars: { XDP_VM: string }): PlannedFile[] {
  const desktop: PlannedFile = {
    path: OPEN_ON_HOST_DESKTOP_FILE,
    content: renderDataFile(`${OPEN_ON_HOST_DESKTOP_ID}.in`, { ...vars, MIME_TYPES: OPEN_ON_HOST_MIME_TYPES.map((t) => `${t};`).join('') }),
    why: '"Open on host": http, https and mailto links go to the host (xdp-vm open-uri)',
  };
  // An admin's own mimeapps.list is theirs: we do not edit it, and say what to add.
  if (existsSync(path.join(root, SYSTEM_MIMEAPPS)) && !ours(root).has(SYSTEM_MIMEAPPS)) {
    desktop.why += `; not made the default, since ${SYSTEM_MIMEAPPS} is not ours: add ${OPEN_ON_HOST_MIME_TYPES.map((t) => `${t}=${OPEN_ON_HOST_DESKTOP_ID}`).join(', ')} under [Default Applications] to make it`;
    return [desktop];
  }
  const defaults = OPEN_ON_HOST_MIME_TYPES.map((t) => `${t}=${OPEN_ON_HOST_DESKTOP_ID};`).join('\n');
  return [
    desktop,
    {
      path: SYSTEM_MIMEAPPS,
      content: `${MARK}\n# A user's ~/.config/mimeapps.list still wins: a VM whose own browser should\n# open its links sets it there.\n[Default Applications]\n${defaults}\n`,
      why: 'makes "Open on host" the VM\'s default for those links (a user\'s own mimeapps.list still wins)',
    },
  ];
}

/** The files a previous install-guest wrote here, by its manifest. */
function ours(root: string): Set<string> {
  const manifest = path.join(root, MANIFEST);
  return new Set<string>(existsSync(manifest) ? (JSON.parse(readFileSync(manifest, 'utf8')) as { files: string[] }).files : []);
}

export function planInstall(opts: InstallOptions): PlannedFile[] {
  const vars = { XDP_VM: opts.command };
  const config: GuestConfig = GuestConfig.parse({ mountPoint: opts.mountPoint, tag: opts.tag, ...(opts.transport ? { transport: opts.transport } : {}) });
  const files: PlannedFile[] = [
    { path: `${SYSTEM_PORTAL_DIR}/vm.portal`, content: vmPortalFile(), why: 'registers the VM backend with xdg-desktop-portal' },
    { path: '/etc/xdg/xdg-desktop-portal/portals.conf', content: `${MARK}\n${portalsConf()}`, why: 'pins our portals to the VM backend (xdg-desktop-portal >= 1.17)' },
    {
      path: '/usr/share/dbus-1/services/org.freedesktop.impl.portal.desktop.vm.service',
      content: renderDataFile('org.freedesktop.impl.portal.desktop.vm.service.in', vars),
      why: 'D-Bus activation of the guest backend',
    },
    { path: '/usr/lib/systemd/user/xdp-vm-guest.service', content: renderDataFile('xdp-vm-guest.service.in', vars), why: 'the guest backend as a user unit' },
    {
      // A drop-in, not a .wants symlink: install-guest writes files, and a session's target may gain a Wants this way.
      path: '/usr/lib/systemd/user/graphical-session.target.d/xdp-vm.conf',
      content: `${MARK}\n[Unit]\nWants=xdp-vm-guest.service\n`,
      why: 'starts the guest backend with the session, so folder shares are mounted and bookmarked at login',
    },
    { path: '/usr/lib/systemd/system/xdp-vm-mount.service', content: renderDataFile('xdp-vm-mount.service.in', vars), why: 'mounts the document share when the host plugs it in' },
    { path: GUEST_CONFIG_PATH, content: `${JSON.stringify(config, null, 2)}\n`, why: 'mount point and tag of the document share' },
    { path: '/etc/environment.d/60-xdp-vm.conf', content: `${MARK}\nGTK_USE_PORTAL=1\nGDK_DEBUG=portals\n`, why: 'GTK 3 and GTK 4 apps use the portal (systemd user sessions)' },
    { path: '/etc/profile.d/xdp-vm.sh', content: `${MARK}\nexport GTK_USE_PORTAL=1\nexport GDK_DEBUG=portals\n`, why: 'the same for login shells and non-systemd sessions' },
  ];
  files.push(...linkHandler(opts.root, vars));
  if (!portalVersionAtLeast(opts.portalVersion, 1, 17)) files.push(...pinFor116(opts.root));
  files.push({ path: MANIFEST, content: `${JSON.stringify({ files: [...files.map((f) => f.path), MANIFEST] }, null, 2)}\n`, why: 'what uninstall-guest removes' });
  return files;
}

/** Files that exist but that a previous install-guest did not write: ours to leave alone. */
export function conflicts(root: string, files: PlannedFile[]): string[] {
  const installed = ours(root);
  return files.map((f) => f.path).filter((p) => !installed.has(p) && existsSync(path.join(root, p)));
}

export function applyInstall(root: string, files: PlannedFile[]): void {
  for (const f of files) {
    const target = path.join(root, f.path);
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, f.content, { mode: 0o644 });
  }
}

/** Remove what the manifest lists; returns the removed paths. */
export function uninstall(root: string): string[] {
  const manifest = path.join(root, MANIFEST);
  if (!existsSync(manifest)) throw new Error(`nothing to remove: ${MANIFEST} does not exist (was install-guest run with this --root?)`);
  const { files } = JSON.parse(readFileSync(manifest, 'utf8')) as { files: string[] };
  const removed: string[] = [];
  for (const f of files) {
    if (!f.startsWith('/') || f.includes('..')) continue;
    const target = path.join(root, f);
    if (existsSync(target)) {
      rmSync(target);
      removed.push(f);
    }
  }
  return removed;
}

export const SERIAL_DEVICE_HINT = `/dev/virtio-ports/${DEFAULT_SERIAL_PORT_NAME}`;
