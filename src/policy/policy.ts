import type { Bus } from '../dbus/bus.js';
import type { Logger } from '../log.js';
import { evaluate, type Decision, type VmIdentity } from './evaluate.js';
import { checkArgument, portalOfTable, PORTAL_NAMES, type InvalidEntry, type PolicyRow, type PortalName, type Verdict } from './model.js';
import { PERMISSION_STORE_INTERFACE, PERMISSION_STORE_NAME, PERMISSION_STORE_PATH, PermissionTables } from './store.js';

/**
 * The daemon's view of the policy: rows cached per portal, dropped whenever
 * the permission store says a table of ours changed, so a change made by any
 * tool (`xdp-vm permissions`, `flatpak permission-set`, gdbus) applies to the
 * next request. A miss reads through. If the store cannot be read, the
 * answer is deny: a policy we cannot see might be a deny.
 */
export interface PolicyDecision extends Decision {
  /** Set when the store could not be read and the verdict is the fail-closed deny. */
  error?: string;
}

/** What portals consult; later portals (Usb, Network) call `decide` and ask on 'ask'. */
export interface PolicyDecider {
  decision(portal: PortalName, arg: string | undefined, vm: VmIdentity): Promise<PolicyDecision>;
  decide(portal: PortalName, arg: string | undefined, vm: VmIdentity): Promise<Verdict>;
  /** `cb` runs after rows may have changed (any tool wrote the store, or it restarted). */
  onChanged?(cb: () => void): void;
}

type Unsubscribe = () => Promise<void>;

export class Policy implements PolicyDecider {
  private readonly tables: PermissionTables;
  private readonly cache = new Map<PortalName, PolicyRow[]>();
  private readonly generation = new Map<PortalName, number>();
  /** The store's unique name while we hold a Changed subscription for it; the cache is used only then. */
  private owner: string | undefined;
  private unwatchChanged: Unsubscribe | undefined;
  private unwatchOwner: Unsubscribe | undefined;
  private watching: Promise<void> | undefined;
  private readonly listeners: (() => void)[] = [];

  private constructor(
    private readonly bus: Bus,
    private readonly log: Logger,
  ) {
    this.tables = new PermissionTables(bus);
  }

  /** Start (by D-Bus activation) and watch the store on `bus`. */
  static async open(bus: Bus, log: Logger): Promise<Policy> {
    const policy = new Policy(bus, log);
    policy.unwatchOwner = await bus.subscribe(
      { sender: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'NameOwnerChanged' },
      (body) => {
        if (body[0] === PERMISSION_STORE_NAME) void policy.ownerChanged(body[2] as string);
      },
    );
    await policy.watch();
    return policy;
  }

  async decide(portal: PortalName, arg: string | undefined, vm: VmIdentity): Promise<Verdict> {
    return (await this.decision(portal, arg, vm)).verdict;
  }

  async decision(portal: PortalName, arg: string | undefined, vm: VmIdentity): Promise<PolicyDecision> {
    // A guest-supplied argument that is not well formed can only meet rows without one.
    const checked = arg === undefined ? undefined : checkArgument(portal, arg);
    const canonical = checked?.ok ? checked.arg : undefined;
    try {
      return evaluate(await this.rows(portal), portal, canonical, vm);
    } catch (err) {
      const error = `cannot read the policy from the permission store: ${(err as Error).message}`;
      this.log.error({ portal }, `${error}; denying`);
      return { verdict: 'deny', error };
    }
  }

  onChanged(cb: () => void): void {
    this.listeners.push(cb);
  }

  async close(): Promise<void> {
    this.listeners.length = 0;
    await this.unwatchOwner?.();
    await this.unwatchChanged?.();
    this.unwatchOwner = this.unwatchChanged = undefined;
    this.owner = undefined;
  }

  private async rows(portal: PortalName): Promise<PolicyRow[]> {
    if (!this.owner) await this.watch().catch((err: Error) => this.log.warn(`not watching the permission store for changes: ${err.message}`));
    const cached = this.owner ? this.cache.get(portal) : undefined;
    if (cached) return cached;
    const generation = this.generation.get(portal) ?? 0;
    const contents = await this.tables.read(portal);
    for (const entry of contents.invalid) this.report(entry);
    // A change that arrived while we read may not be in what we read: keep it uncached.
    if (this.owner && generation === (this.generation.get(portal) ?? 0)) this.cache.set(portal, contents.rows);
    return contents.rows;
  }

  private report(e: InvalidEntry): void {
    this.log.warn({ table: e.table, id: e.id, app: e.app, value: e.value }, `ignoring a permission store entry that is not a policy row: ${e.problem}`);
  }

  /** Subscribe to Changed from the store's current owner, starting the store if need be. */
  private watch(): Promise<void> {
    this.watching ??= (async () => {
      await this.tables.ids(PORTAL_NAMES[0]); // any call activates the store
      const owner = await this.bus.nameOwner(PERMISSION_STORE_NAME);
      if (!owner) throw new Error(`${PERMISSION_STORE_NAME} has no owner on the session bus`);
      await this.unwatchChanged?.();
      this.unwatchChanged = await this.bus.subscribe(
        { sender: owner, path: PERMISSION_STORE_PATH, interface: PERMISSION_STORE_INTERFACE, member: 'Changed' },
        (body) => this.changed(body[0]),
      );
      this.owner = owner;
      this.invalidate();
    })().finally(() => (this.watching = undefined));
    return this.watching;
  }

  private changed(table: unknown): void {
    const portal = typeof table === 'string' ? portalOfTable(table) : undefined;
    if (portal) this.invalidate(portal);
  }

  private invalidate(portal?: PortalName): void {
    for (const p of portal ? [portal] : PORTAL_NAMES) {
      this.cache.delete(p);
      this.generation.set(p, (this.generation.get(p) ?? 0) + 1);
    }
    for (const cb of this.listeners) cb();
  }

  /** The store restarted or went away: its old unique name's signals mean nothing now. */
  private async ownerChanged(newOwner: string): Promise<void> {
    if (newOwner === this.owner) return;
    this.owner = undefined;
    this.invalidate();
    await this.unwatchChanged?.();
    this.unwatchChanged = undefined;
    this.log.info({ owner: newOwner || null }, 'the permission store changed hands; re-reading the policy');
    if (newOwner) await this.watch().catch((err: Error) => this.log.warn(`not watching the permission store for changes: ${err.message}`));
  }
}
