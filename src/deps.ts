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
