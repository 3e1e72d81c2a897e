import { MAX_LIVE } from './schema.js';

/**
 * One VM's live notifications on the host: its guest ids and the host
 * server's ids for them, both ways. Each VM has its own, so a signal about
 * another VM's notification finds nothing here, and a guest can only name
 * (replace, close) ids of its own. Bounded: past `max` the oldest is
 * forgotten (its clicks then reach no one), so a guest that never closes
 * anything cannot grow the daemon.
 */
export class LiveNotifications {
  /** Guest id → host id, oldest first (a Map keeps insertion order). */
  private readonly byGuest = new Map<number, number>();
  private readonly byHost = new Map<number, number>();

  constructor(private readonly max = MAX_LIVE) {}

  get size(): number {
    return this.byGuest.size;
  }

  hostId(guestId: number): number | undefined {
    return this.byGuest.get(guestId);
  }

  guestId(hostId: number): number | undefined {
    return this.byHost.get(hostId);
  }

  /** Remember that `guestId` is shown as `hostId`; returns the guest ids forgotten to make room. */
  set(guestId: number, hostId: number): number[] {
    this.forgetGuest(guestId);
    // A server may reuse an id another of ours held (after it closed): the newest holder wins.
    const previous = this.byHost.get(hostId);
    if (previous !== undefined) this.forgetGuest(previous);
    const evicted: number[] = [];
    while (this.byGuest.size >= this.max) {
      const oldest = this.byGuest.keys().next().value as number;
      this.forgetGuest(oldest);
      evicted.push(oldest);
    }
    this.byGuest.set(guestId, hostId);
    this.byHost.set(hostId, guestId);
    return evicted;
  }

  forgetGuest(guestId: number): number | undefined {
    const hostId = this.byGuest.get(guestId);
    if (hostId === undefined) return undefined;
    this.byGuest.delete(guestId);
    if (this.byHost.get(hostId) === guestId) this.byHost.delete(hostId);
    return hostId;
  }

  forgetHost(hostId: number): number | undefined {
    const guestId = this.byHost.get(hostId);
    if (guestId !== undefined) this.forgetGuest(guestId);
    return guestId;
  }

  /** Forget everything (the host's server restarted: its ids mean nothing now); returns the guest ids. */
  clear(): number[] {
    const ids = [...this.byGuest.keys()];
    this.byGuest.clear();
    this.byHost.clear();
    return ids;
  }
}
