import type { AnyHandler } from '../src/protocol/connection.js';
import { PORTALS, type PortalName } from './index.js';
import type { HostHalf, HostPortalDeps } from './portal.js';

export type { HostPortalDeps } from './portal.js';

/** Every portal's host half, loaded once when the daemon starts. */
export type HostHalves = ReadonlyMap<PortalName, HostHalf>;

export async function loadHostHalves(): Promise<HostHalves> {
  const halves = new Map<PortalName, HostHalf>();
  for (const p of PORTALS) if ('host' in p && p.host) halves.set(p.name, await p.host());
  return halves;
}

/** Every portal's host handlers for one VM, each behind that VM's flood gate. */
export function hostHandlersFor(halves: HostHalves, deps: HostPortalDeps): [string, AnyHandler][] {
  return [...halves].flatMap(([portal, half]) =>
    Object.entries(half(deps)).map(([method, handler]): [string, AnyHandler] => [method, deps.flood.guard(deps.vm.name, portal, handler, deps.nextRequestId)]),
  );
}
