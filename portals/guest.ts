import type { Bus } from '../src/dbus/bus.js';
import type { HostLink } from '../src/guest/host-link.js';
import type { Logger } from '../src/log.js';
import { PORTALS } from './index.js';

/** Export every portal's guest half on the guest bus; returns the function that unexports them all. */
export async function exportGuestHalves(bus: Bus, host: HostLink, log: Logger): Promise<() => void> {
  const unexports: (() => void)[] = [];
  for (const p of PORTALS) {
    const half = 'guest' in p && p.guest ? await p.guest() : undefined;
    if (half) unexports.push(half(bus, host, log));
  }
  return () => unexports.forEach((u) => u());
}
