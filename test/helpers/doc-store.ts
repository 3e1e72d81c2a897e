import { closeSync, openSync } from 'node:fs';
import { Bus } from '../../src/dbus/bus.js';
import { appIdOf } from '../../src/host/documents.js';

/**
 * The document store as a test sees it, without going through the daemon's
 * own grant code: a fixture can give a VM a folder read-write (what a user
 * could have done earlier), and a check can list what a VM may see straight
 * from xdg-document-portal, so neither depends on the code under test.
 */
const DEST = 'org.freedesktop.portal.Documents';
const OBJ = '/org/freedesktop/portal/documents';
const IFACE = 'org.freedesktop.portal.Documents';
const O_PATH = 0o10000000;
const O_DIRECTORY = 0o200000;
const FLAG_REUSE_EXISTING = 1;
const FLAG_PERSISTENT = 2;
const FLAG_EXPORT_DIRECTORY = 8;

export interface StoreDocument {
  id: string;
  /** The host path the document stands for. */
  path: string;
  permissions: string[];
}

export class DocStore {
  private constructor(private readonly bus: Bus) {}

  static async open(address: string): Promise<DocStore> {
    return new DocStore(await Bus.connect(address, { unixFds: true }));
  }

  close(): void {
    this.bus.close();
  }

  /** Give `vm` an existing file or folder, as the store's AddFull does for a portal (the fd is O_PATH, following links). */
  async grantExisting(vm: string, hostPath: string, opts: { write: boolean; directory?: boolean }): Promise<string> {
    const fd = openSync(hostPath, O_PATH | (opts.directory ? O_DIRECTORY : 0));
    try {
      const flags = FLAG_REUSE_EXISTING | FLAG_PERSISTENT | (opts.directory ? FLAG_EXPORT_DIRECTORY : 0);
      const [ids] = await this.call('AddFull', 'ahusas', [[fd], flags, appIdOf(vm), opts.write ? ['read', 'write'] : ['read']]);
      return (ids as string[])[0]!;
    } finally {
      closeSync(fd);
    }
  }

  /** Every document `vm` has any permission on, with its host path. */
  async documentsOf(vm: string): Promise<StoreDocument[]> {
    const [docs] = await this.call('List', 's', [appIdOf(vm)]);
    const out: StoreDocument[] = [];
    for (const [id, raw] of Object.entries(docs as Record<string, Buffer>)) {
      const [, perms] = await this.call('Info', 's', [id]);
      const permissions = (perms as Record<string, string[]>)[appIdOf(vm)] ?? [];
      if (permissions.length) out.push({ id, path: Buffer.from(raw).toString('utf8').replace(/\0+$/, ''), permissions });
    }
    return out.sort((a, b) => a.path.localeCompare(b.path));
  }

  /** Take back everything `vm` may do with document `id` (the store's own revoke, as `xdp-vm grants revoke` does). */
  async revoke(vm: string, id: string): Promise<void> {
    await this.call('RevokePermissions', 'ssas', [id, appIdOf(vm), ['read', 'write', 'grant-permissions', 'delete']]);
  }

  private call(member: string, signature: string, body: unknown[]): Promise<unknown[]> {
    return this.bus.call({ destination: DEST, path: OBJ, interface: IFACE, member, signature, body, timeoutMs: 10_000 });
  }
}
