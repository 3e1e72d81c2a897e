import { closeSync, constants, openSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Bus } from '../dbus/bus.js';
import { bytesToString, stringToBytes } from '../dbus/values.js';

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

export const APP_ID_PREFIX = 'io.github.xdp_vm.vm.';

export function appIdOf(vm: string): string {
  return `${APP_ID_PREFIX}${vm}`;
}

export interface Grant {
  vm: string;
  id: string;
  hostPath: string;
  /** The entry inside the document's folder: the file's or directory's name. */
  name: string;
  writable: boolean;
}

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
   * Grant `hostPath` to `vm`. An existing file or directory is added as it is;
   * a path that does not exist yet (a save target) is added by name in its folder.
   */
  async grant(vm: string, hostPath: string, opts: { write: boolean }): Promise<Grant> {
    const permissions = opts.write ? ['read', 'write'] : ['read'];
    const flags = FLAG_REUSE_EXISTING | FLAG_PERSISTENT;
    const st = statOrUndefined(hostPath);
    let id: string;
    if (st) {
      const fd = openSync(hostPath, O_PATH);
      try {
        const [ids] = await this.docs('AddFull', 'ahusas', [[fd], flags | (st.isDirectory() ? FLAG_EXPORT_DIRECTORY : 0), appIdOf(vm), permissions]);
        id = (ids as string[])[0]!;
      } finally {
        closeSync(fd);
      }
    } else {
      const dirFd = openSync(path.dirname(hostPath), O_PATH | constants.O_DIRECTORY);
      try {
        const [docId] = await this.docs('AddNamedFull', 'hayusas', [dirFd, stringToBytes(path.basename(hostPath)), flags, appIdOf(vm), permissions]);
        id = docId as string;
      } finally {
        closeSync(dirFd);
      }
    }
    return { vm, id, hostPath, name: path.basename(hostPath), writable: opts.write };
  }

  /** Every document `vm` may see. */
  async list(vm: string): Promise<Grant[]> {
    const [docs] = await this.docs('List', 's', [appIdOf(vm)]);
    const grants: Grant[] = [];
    for (const [id, raw] of Object.entries(docs as Record<string, Buffer>)) {
      const g = await this.lookup(vm, id, bytesToString(raw));
      if (g) grants.push(g);
    }
    return grants.sort((a, b) => a.hostPath.localeCompare(b.hostPath));
  }

  /** The grant `id` of `vm`, or undefined if `vm` has no permission on it. */
  async lookup(vm: string, id: string, knownPath?: string): Promise<Grant | undefined> {
    if (!/^[A-Za-z0-9]{1,64}$/.test(id)) return undefined;
    let info: unknown[];
    try {
      info = await this.docs('Info', 's', [id]);
    } catch {
      return undefined;
    }
    const hostPath = knownPath ?? bytesToString(info[0]);
    const perms = (info[1] as Record<string, string[]>)[appIdOf(vm)];
    if (!hostPath || !perms?.includes('read')) return undefined;
    return { vm, id, hostPath, name: path.basename(hostPath), writable: perms.includes('write') };
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

function statOrUndefined(p: string) {
  try {
    return statSync(p);
  } catch {
    return undefined;
  }
}
