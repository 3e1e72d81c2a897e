import { accessSync, constants } from 'node:fs';
import path from 'node:path';

/**
 * Every external program the project runs, with the Debian package that ships it.
 * `xdp-vm doctor` walks this table and the exec wrapper uses it to name the
 * package in the error when a program is missing.
 */
export interface Dependency {
  id: string;
  what: string;
  /** Absolute paths tried first, then the bare names on PATH. */
  candidates: string[];
  debianPackage: string;
  /** Which side needs it: the host daemon, the guest backend, or only the tests. */
  side: 'host' | 'guest' | 'both' | 'test';
}

export const DEPENDENCIES: readonly Dependency[] = [
  { id: 'dbus-daemon', what: 'D-Bus message bus', candidates: ['/usr/bin/dbus-daemon', 'dbus-daemon'], debianPackage: 'dbus-daemon', side: 'test' },
  { id: 'xdg-desktop-portal', what: 'portal frontend', candidates: ['/usr/libexec/xdg-desktop-portal'], debianPackage: 'xdg-desktop-portal', side: 'both' },
  { id: 'xdg-document-portal', what: 'document store (per-VM views)', candidates: ['/usr/libexec/xdg-document-portal'], debianPackage: 'xdg-desktop-portal', side: 'host' },
  { id: 'xdg-permission-store', what: 'permission store', candidates: ['/usr/libexec/xdg-permission-store'], debianPackage: 'xdg-desktop-portal', side: 'host' },
  { id: 'fusermount3', what: 'FUSE mount helper used by the document store', candidates: ['/usr/bin/fusermount3', 'fusermount3'], debianPackage: 'fuse3', side: 'host' },
  { id: 'virtiofsd', what: 'virtio-fs daemon exporting each VM share', candidates: ['/usr/lib/qemu/virtiofsd', '/usr/libexec/virtiofsd', 'virtiofsd'], debianPackage: 'qemu-system-common', side: 'host' },
  { id: 'newuidmap', what: "newuidmap, maps the user's subordinate uids into an unprivileged virtiofsd's user namespace", candidates: ['/usr/bin/newuidmap', 'newuidmap'], debianPackage: 'uidmap', side: 'host' },
  { id: 'newgidmap', what: "newgidmap, maps the user's subordinate gids into an unprivileged virtiofsd's user namespace", candidates: ['/usr/bin/newgidmap', 'newgidmap'], debianPackage: 'uidmap', side: 'host' },
  { id: 'unshare', what: 'unshare, starts an unprivileged virtiofsd in its own user and mount namespaces', candidates: ['/usr/bin/unshare', 'unshare'], debianPackage: 'util-linux', side: 'host' },
  { id: 'setpriv', what: "setpriv, sets an unprivileged virtiofsd's securebits (and drops privileges in tests)", candidates: ['/usr/bin/setpriv', 'setpriv'], debianPackage: 'util-linux', side: 'host' },
  { id: 'mount', what: "mount, gives an unprivileged virtiofsd a writable /var/run for its pid file", candidates: ['/usr/bin/mount', '/bin/mount', 'mount'], debianPackage: 'mount', side: 'host' },
  { id: 'qemu-system-x86_64', what: 'QEMU, for the end-to-end guest tests', candidates: ['/usr/bin/qemu-system-x86_64', 'qemu-system-x86_64'], debianPackage: 'qemu-system-x86', side: 'test' },
  { id: 'busybox-static', what: 'static busybox for the test guest initramfs', candidates: ['/bin/busybox', '/usr/bin/busybox'], debianPackage: 'busybox-static', side: 'test' },
  { id: 'cpio', what: 'cpio, packs the test guest initramfs', candidates: ['/usr/bin/cpio', 'cpio'], debianPackage: 'cpio', side: 'test' },
  { id: 'xz', what: 'xz, unpacks the test guest kernel', candidates: ['/usr/bin/xz', 'xz'], debianPackage: 'xz-utils', side: 'test' },
  { id: 'zstd', what: 'zstd, unpacks zstd-compressed test guest kernels', candidates: ['/usr/bin/zstd', 'zstd'], debianPackage: 'zstd', side: 'test' },
  { id: 'gjs', what: 'GJS with the GTK 4 and libadwaita typelibs, runs the consent dialog', candidates: ['/usr/bin/gjs', 'gjs'], debianPackage: 'gjs gir1.2-gtk-4.0 gir1.2-adw-1', side: 'host' },
  { id: 'Xvfb', what: 'virtual X server for the dialog tests', candidates: ['/usr/bin/Xvfb', 'Xvfb'], debianPackage: 'xvfb', side: 'test' },
  { id: 'xdotool', what: 'X input scripting for the dialog tests', candidates: ['/usr/bin/xdotool', 'xdotool'], debianPackage: 'xdotool', side: 'test' },
  { id: 'xwininfo', what: 'X window inspection for the dialog tests', candidates: ['/usr/bin/xwininfo', 'xwininfo'], debianPackage: 'x11-utils', side: 'test' },
  { id: 'import', what: "ImageMagick's screen grabber for the dialog tests", candidates: ['/usr/bin/import', 'import'], debianPackage: 'imagemagick', side: 'test' },
  { id: 'convert', what: "ImageMagick's converter, crops and scales screenshots for OCR in tests", candidates: ['/usr/bin/convert', 'convert'], debianPackage: 'imagemagick', side: 'test' },
  { id: 'tesseract', what: 'OCR, reads the dialog screenshots in tests', candidates: ['/usr/bin/tesseract', 'tesseract'], debianPackage: 'tesseract-ocr', side: 'test' },
  { id: 'python3', what: 'Python, drives the terminal prompt tests through a pty', candidates: ['/usr/bin/python3', 'python3'], debianPackage: 'python3', side: 'test' },
  { id: 'flatpak', what: 'flatpak CLI, reads our policy rows back in the permission tests', candidates: ['/usr/bin/flatpak', 'flatpak'], debianPackage: 'flatpak', side: 'test' },
  { id: 'virsh', what: 'libvirt client, drives VMs whose vmm type is "libvirt" (host daemon) and the libvirt tests', candidates: ['/usr/bin/virsh', 'virsh'], debianPackage: 'libvirt-clients', side: 'test' },
  { id: 'libvirtd', what: 'libvirt daemon with its QEMU driver, for the libvirt end-to-end tests', candidates: ['/usr/sbin/libvirtd', 'libvirtd'], debianPackage: 'libvirt-daemon-system libvirt-daemon-driver-qemu', side: 'test' },
  { id: 'passt', what: 'passt, user-mode networking (no privileges) for VMs on "user" networks', candidates: ['/usr/bin/passt', 'passt'], debianPackage: 'passt', side: 'host' },
  { id: 'ip', what: 'iproute2, makes taps and enslaves them to bridges (the privileged helper)', candidates: ['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip', 'ip'], debianPackage: 'iproute2', side: 'host' },
  { id: 'dnsmasq', what: 'dnsmasq, the DHCP server the privileged helper starts on each vm-only bridge', candidates: ['/usr/sbin/dnsmasq', 'dnsmasq'], debianPackage: 'dnsmasq-base', side: 'host' },
  { id: 'udevadm', what: 'udevadm, follows host USB devices plugged in and out (its kernel monitor; no udevd needed)', candidates: ['/usr/bin/udevadm', '/bin/udevadm', 'udevadm'], debianPackage: 'udev', side: 'host' },
  { id: 'getent', what: 'getent, looks up the helper\'s caller in the user database', candidates: ['/usr/bin/getent', 'getent'], debianPackage: 'libc-bin', side: 'host' },
  { id: 'id', what: 'id, lists the helper\'s caller\'s groups for @group rules', candidates: ['/usr/bin/id', 'id'], debianPackage: 'coreutils', side: 'host' },
  { id: 'nsenter', what: 'nsenter, runs commands in the privileged helper test\'s network namespace', candidates: ['/usr/bin/nsenter', 'nsenter'], debianPackage: 'util-linux', side: 'test' },
  { id: 'xmllint', what: "xmllint, checks the libvirt XML we build against libvirt's RelaxNG schema in tests", candidates: ['/usr/bin/xmllint', 'xmllint'], debianPackage: 'libxml2-utils', side: 'test' },
] as const;

export function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Resolve a program: an absolute candidate that exists, else the first bare name found on PATH. */
export function whichProgram(candidates: readonly string[], envPath = process.env.PATH ?? ''): string | undefined {
  for (const candidate of candidates) {
    if (path.isAbsolute(candidate)) {
      if (isExecutable(candidate)) return candidate;
      continue;
    }
    for (const dir of envPath.split(':').filter(Boolean)) {
      const full = path.join(dir, candidate);
      if (isExecutable(full)) return full;
    }
  }
  return undefined;
}

export function dependency(id: string): Dependency {
  const dep = DEPENDENCIES.find((d) => d.id === id);
  if (!dep) throw new Error(`unknown dependency ${id}`);
  return dep;
}

export class MissingDependencyError extends Error {
  constructor(readonly dep: Dependency) {
    super(`${dep.what} (${dep.id}) is not installed; install it with: sudo apt-get install ${dep.debianPackage}`);
    this.name = 'MissingDependencyError';
  }
}

export function requireProgram(id: string, override?: string): string {
  const dep = dependency(id);
  const found = whichProgram(override ? [override] : dep.candidates);
  if (!found) throw new MissingDependencyError(dep);
  return found;
}
