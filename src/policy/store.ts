import { z } from 'zod';
import { BusCallError, type Bus } from '../dbus/bus.js';
import {
  PORTAL_NAMES,
  idOf,
  isInvalid,
  rowFromStore,
  tableOf,
  verdictToStore,
  type InvalidEntry,
  type PolicyRow,
  type PortalName,
} from './model.js';

/**
 * Our rows in the real xdg-permission-store, one table per portal. No cache
 * here: the CLI reads and writes through this directly, and the daemon's
 * Policy caches on top of it. Everything read is validated, because any tool
 * (flatpak, gdbus, a script) may have written the entry.
 */
export const PERMISSION_STORE_NAME = 'org.freedesktop.impl.portal.PermissionStore';
export const PERMISSION_STORE_PATH = '/org/freedesktop/impl/portal/PermissionStore';
export const PERMISSION_STORE_INTERFACE = 'org.freedesktop.impl.portal.PermissionStore';

const NOT_FOUND = 'org.freedesktop.portal.Error.NotFound';

const Ids = z.array(z.string());
/** Lookup's a{sas}, loosely: the values are judged one by one so one bad entry spoils only itself. */
const AppPermissions = z.record(z.string(), z.unknown());

export interface TableContents {
  rows: PolicyRow[];
  invalid: InvalidEntry[];
}

export class PermissionTables {
  constructor(private readonly bus: Bus) {}

  private call(member: string, signature: string, body: unknown[]): Promise<unknown[]> {
    return this.bus.call({ destination: PERMISSION_STORE_NAME, path: PERMISSION_STORE_PATH, interface: PERMISSION_STORE_INTERFACE, member, signature, body });
  }

  async ids(portal: PortalName): Promise<string[]> {
    const [ids] = await this.call('List', 's', [tableOf(portal)]);
    return Ids.parse(ids);
  }

  /** The app → value map of one id, or undefined when the id is gone. */
  async lookup(portal: PortalName, id: string): Promise<Record<string, unknown> | undefined> {
    try {
      const [perms] = await this.call('Lookup', 'ss', [tableOf(portal), id]);
      const parsed = AppPermissions.safeParse(perms);
      return parsed.success ? parsed.data : {};
    } catch (err) {
      if (err instanceof BusCallError && err.errorName === NOT_FOUND) return undefined;
      throw err;
    }
  }

  async read(portal: PortalName): Promise<TableContents> {
    const out: TableContents = { rows: [], invalid: [] };
    for (const id of await this.ids(portal)) {
      const perms = await this.lookup(portal, id);
      for (const [app, value] of Object.entries(perms ?? {})) {
        const r = rowFromStore(portal, id, app, value);
        if (!r) continue;
        if (isInvalid(r)) out.invalid.push(r);
        else out.rows.push(r);
      }
    }
    return out;
  }

  async readAll(): Promise<TableContents> {
    const out: TableContents = { rows: [], invalid: [] };
    for (const portal of PORTAL_NAMES) {
      const t = await this.read(portal);
      out.rows.push(...t.rows);
      out.invalid.push(...t.invalid);
    }
    return out;
  }

  async set(row: PolicyRow): Promise<void> {
    await this.call('SetPermission', 'sbssas', [tableOf(row.portal), true, idOf(row), row.subject, verdictToStore(row.verdict)]);
  }

  /** Remove every entry of `subject` (any value, ours or not) from our tables; returns how many went. */
  async resetSubject(subject: string): Promise<number> {
    let removed = 0;
    for (const portal of PORTAL_NAMES) {
      for (const id of await this.ids(portal)) {
        const perms = await this.lookup(portal, id);
        if (!perms || !(subject in perms)) continue;
        await this.call('DeletePermission', 'sss', [tableOf(portal), id, subject]);
        if (!(Array.isArray(perms[subject]) && perms[subject].length === 0)) removed++;
      }
    }
    return removed;
  }

  /** Delete every id of our tables; returns how many rows went. */
  async resetAll(): Promise<number> {
    let removed = 0;
    for (const portal of PORTAL_NAMES) {
      for (const id of await this.ids(portal)) {
        const perms = await this.lookup(portal, id);
        removed += Object.values(perms ?? {}).filter((v) => !(Array.isArray(v) && v.length === 0)).length;
        await this.call('Delete', 'ss', [tableOf(portal), id]).catch((err: unknown) => {
          if (!(err instanceof BusCallError && err.errorName === NOT_FOUND)) throw err;
        });
      }
    }
    return removed;
  }
}
