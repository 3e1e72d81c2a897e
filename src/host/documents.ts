import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, type Stats } from 'node:fs';
import path from 'node:path';
import type { Bus } from '../dbus/bus.js';
import { bytesToString } from '../dbus/values.js';
import { basenameBytes, dirnameBytes, displayBytes } from '../file-uri.js';
import { isDocumentId } from '../guest-input.js';

/**
 * Per-VM views of the user's one document store (xdg-document-portal).
 *
 * Each VM is an "app" of the document store with its own app id; the store's
 * FUSE filesystem shows that app's documents, and only those, under
 * `<mountpoint>/by-app/<app id>/`, which is what the VM's virtiofs share
 * exports. The store enforces read/write per app, persists documents, and
 * hides a revoked document at once. README "Why by-app" has the measurements.
 */
const DEST = 'org.freedesktop.portal.Documents';
const OBJ = '/org/freedesktop/portal/documents';
const IFACE = 'org.freedesktop.portal.Documents';

const FLAG_REUSE_EXISTING = 1;
const FLAG_PERSISTENT = 2;
const FLAG_EXPORT_DIRECTORY = 8;
const ALL_PERMISSIONS = ['read', 'write', 'grant-permissions', 'delete'];
const O_PATH = 0o10000000;

/** The chosen path cannot be granted; the message says why, in words for the user and the log. */
export class GrantRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GrantRefused';
  }
}

export const APP_ID_PREFIX = 'io.github.xdp_vm.vm.';

export function appIdOf(vm: string): string {
  return `${APP_ID_PREFIX}${vm}`;
}

export interface Grant {
  vm: string;
  id: string;
  /** The host path exactly: Linux names are bytes, and not every name is UTF-8. */
  pathBytes: Buffer;
  /** The host path for people and logs (bytes that are not UTF-8 shown as `\xNN`). */
  hostPath: string;
  /** The entry inside the document's folder: the file's or directory's name, as bytes and for people. */
  nameBytes: Buffer;
  name: string;
  writable: boolean;
}

function grantOf(vm: string, id: string, pathBytes: Buffer, writable: boolean): Grant {
  const nameBytes = basenameBytes(pathBytes);
  return { vm, id, pathBytes, hostPath: displayBytes(pathBytes), nameBytes, name: displayBytes(nameBytes), writable };
}

/** A D-Bus bytestring without its terminating NUL. */
function rawBytes(value: unknown): Buffer | undefined {
  if (!Buffer.isBuffer(value) && !(value instanceof Uint8Array)) return undefined;
  let end = value.length;
  while (end > 0 && value[end - 1] === 0) end--;
  return end > 0 ? Buffer.from(value.subarray(0, end)) : undefined;
}

const withNul = (b: Buffer) => Buffer.concat([b, Buffer.from([0])]);

export class DocumentStore {
  private constructor(
    private readonly bus: Bus,
    readonly mountPoint: string,
  ) {}

  /** `bus` must have been opened with unix fd passing. */
  static async open(bus: Bus): Promise<DocumentStore> {
    const [mp] = await bus.call({ destination: DEST, path: OBJ, interface: IFACE, member: 'GetMountPoint', timeoutMs: 10_000 });
    const mountPoint = bytesToString(mp);
    if (!mountPoint) throw new Error('the document store reported no mount point');
    return new DocumentStore(bus, mountPoint);
  }

  /** The folder a VM's share exports: its documents, nobody else's. */
  viewOf(vm: string): string {
    return path.join(this.mountPoint, 'by-app', appIdOf(vm));
  }

  /**
   * Grant `hostPath` to `vm`. An existing file or directory is added as it
   * is; a path that does not exist yet (a save target) is added by name in
   * its folder.
   *
   * The symlink rule: a path whose last component is a symbolic link is
   * refused. The user saw a name in the dialog; a link planted there (by a
   * VM with write access to the folder, say) would grant its target, a file
   * the user never saw, under the link's name. The file is opened with
   * O_NOFOLLOW and checked on that descriptor, so the check and the grant
   * are about the same inode. Folders above it are followed: the user
   * browsed through them and saw their contents.
   */
  async grant(vm: string, target: Buffer | string, opts: { write: boolean }): Promise<Grant> {
    const hostPath = typeof target === 'string' ? Buffer.from(target) : target;
    const permissions = opts.write ? ['read', 'write'] : ['read'];
    const flags = FLAG_REUSE_EXISTING | FLAG_PERSISTENT;
    const shown = displayBytes(hostPath);
    let id: string;
    const fd = openIfExists(hostPath, O_PATH | constants.O_NOFOLLOW);
    if (fd !== undefined) {
      try {
        const st = fstatSync(fd);
        const problem = ungrantable(shown, st);
        if (problem) throw new GrantRefused(problem);
        // The store refuses O_NOFOLLOW descriptors (it wants the target), so
        // hand it the same inode reopened through the descriptor we checked.
        const same = openSync(`/proc/self/fd/${fd}`, O_PATH);
        try {
          const again = fstatSync(same);
          if (again.ino !== st.ino || again.dev !== st.dev) throw new GrantRefused(`${shown} changed while it was being shared`);
          const [ids] = await this.docs('AddFull', 'ahusas', [[same], flags | (st.isDirectory() ? FLAG_EXPORT_DIRECTORY : 0), appIdOf(vm), permissions]);
          id = (ids as string[])[0]!;
        } finally {
          closeSync(same);
        }
      } finally {
        closeSync(fd);
      }
    } else {
      const dirFd = openSync(dirnameBytes(hostPath), O_PATH | constants.O_DIRECTORY);
      try {
        const [docId] = await this.docs('AddNamedFull', 'hayusas', [dirFd, withNul(basenameBytes(hostPath)), flags, appIdOf(vm), permissions]);
        id = docId as string;
      } finally {
        closeSync(dirFd);
      }
    }
    return grantOf(vm, id, hostPath, opts.write);
  }

  /**
   * The VM names that have documents in the store, configured or not: the
   * store's by-app folder lists every app id it knows, and an app's folder
   * lists the documents it may still see.
   */
  vmsWithDocuments(): string[] {
    const byApp = path.join(this.mountPoint, 'by-app');
    let apps: string[];
    try {
      apps = readdirSync(byApp);
    } catch {
      return [];
    }
    return apps
      .filter((app) => app.startsWith(APP_ID_PREFIX) && /^[a-z0-9][a-z0-9-]*$/.test(app.slice(APP_ID_PREFIX.length)))
      .filter((app) => {
        try {
          return readdirSync(path.join(byApp, app)).length > 0;
        } catch {
          return false;
        }
      })
      .map((app) => app.slice(APP_ID_PREFIX.length));
  }

  /** Every document `vm` may see. */
  async list(vm: string): Promise<Grant[]> {
    const [docs] = await this.docs('List', 's', [appIdOf(vm)]);
    const grants: Grant[] = [];
    for (const [id, raw] of Object.entries(docs as Record<string, Buffer>)) {
      const g = await this.lookup(vm, id, rawBytes(raw));
      if (g) grants.push(g);
    }
    return grants.sort((a, b) => a.hostPath.localeCompare(b.hostPath));
  }

  /** The grant `id` of `vm`, or undefined if `vm` has no permission on it. */
  async lookup(vm: string, id: string, knownPath?: Buffer): Promise<Grant | undefined> {
    if (!isDocumentId(id)) return undefined;
    let info: unknown[];
    try {
      info = await this.docs('Info', 's', [id]);
    } catch {
      return undefined;
    }
    const hostPath = knownPath ?? rawBytes(info[0]);
    const perms = (info[1] as Record<string, string[]>)[appIdOf(vm)];
    if (!hostPath || !perms?.includes('read')) return undefined;
    return grantOf(vm, id, hostPath, perms.includes('write'));
  }

  async revoke(vm: string, id: string): Promise<boolean> {
    if (!(await this.lookup(vm, id))) return false;
    await this.docs('RevokePermissions', 'ssas', [id, appIdOf(vm), ALL_PERMISSIONS]);
    return true;
  }

  private docs(member: string, signature: string, body: unknown[]): Promise<unknown[]> {
    return this.bus.call({ destination: DEST, path: OBJ, interface: IFACE, member, signature, body, timeoutMs: 10_000 });
  }
}

function ungrantable(shown: string, st: Stats): string | undefined {
  if (st.isSymbolicLink()) return `${shown} is a symbolic link; only the file itself can be shared, so choose its target instead`;
  if (!st.isFile() && !st.isDirectory()) return `${shown} is neither a regular file nor a folder`;
  return undefined;
}

/**
 * Why `p` cannot be granted, checked before any of a request's paths is: so
 * that one refused path in a multiple choice grants none. `grant` checks
 * again on the descriptor it grants.
 */
export function whyNotGrantable(p: Buffer): string | undefined {
  let st: Stats;
  try {
    st = lstatSync(p);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : `${displayBytes(p)}: ${(err as Error).message}`;
  }
  return ungrantable(displayBytes(p), st);
}

/** A descriptor for `p`, or undefined when nothing is there (a save target); other errors throw. */
function openIfExists(p: Buffer, flags: number): number | undefined {
  try {
    return openSync(p, flags);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}
