import type { AnyHandler } from '../src/protocol/connection.js';
import type { NotificationHandler } from '../src/protocol/methods.js';
import { PORTALS, portalByName, type PortalName } from './index.js';
import type { HostHalf, HostPortalDeps } from './portal.js';

export type { HostPortalDeps } from './portal.js';

/** Every portal's host half, loaded once when the daemon starts. */
export type HostHalves = ReadonlyMap<PortalName, HostHalf>;

export async function loadHostHalves(): Promise<HostHalves> {
  const halves = new Map<PortalName, HostHalf>();
  for (const p of PORTALS) if ('host' in p && p.host) halves.set(p.name, await p.host());
  return halves;
}

export interface VmHandlers {
  methods: [string, AnyHandler][];
  notifications: [string, NotificationHandler][];
}

/** Every portal's host handlers for one VM; each method behind that VM's flood gate, unless its portal limits its own rate. */
export function hostHandlersFor(halves: HostHalves, deps: HostPortalDeps): VmHandlers {
  const out: VmHandlers = { methods: [], notifications: [] };
  for (const [portal, half] of halves) {
    const handlers = half(deps);
    const gated = !('ownRateLimit' in portalByName(portal));
    for (const [method, handler] of Object.entries(handlers.methods ?? {})) out.methods.push([method, gated ? deps.flood.guard(deps.vm.name, portal, handler, deps.nextRequestId) : handler]);
    out.notifications.push(...Object.entries(handlers.notifications ?? {}));
  }
  return out;
}
