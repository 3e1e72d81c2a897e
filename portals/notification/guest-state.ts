import type { TypedValue } from '../../src/dbus/bus.js';
import { MAX_LIVE } from './schema.js';

/**
 * The guest half's live notifications, in one id space shared by its two
 * faces: libnotify ids are these ids, and each portal (app id, id) pair is
 * given one. For each, what the wire's action keys stand for in the app's
 * own terms, which never leave the guest: a libnotify app's action keys,
 * a portal app's action names and targets. Bounded like the host's.
 */
export type GuestEntry =
  | { kind: 'libnotify'; sender: string; keys: Record<string, string> }
  | { kind: 'portal'; appId: string; portalId: string; frontend: string; actions: Record<string, { name: string; target?: TypedValue }> };

const MAX_ID = 0xffffffff;

export class GuestNotifications {
  private readonly entries = new Map<number, GuestEntry>();
  private readonly byPortal = new Map<string, number>();
  private next = 1;

  constructor(private readonly max = MAX_LIVE) {}

  get(id: number): GuestEntry | undefined {
    return this.entries.get(id);
  }

  /** A fresh id: never 0 (libnotify's "none"), never one that is live. */
  allocate(): number {
    for (;;) {
      const id = this.next;
      this.next = id >= MAX_ID ? 1 : id + 1;
      if (!this.entries.has(id)) return id;
    }
  }

  /** The id of a portal app's notification: the one it had if it replaces it, else a fresh one. */
  portalIdFor(appId: string, portalId: string): number {
    return this.byPortal.get(portalKey(appId, portalId)) ?? this.allocate();
  }

  findPortal(appId: string, portalId: string): number | undefined {
    return this.byPortal.get(portalKey(appId, portalId));
  }

  /** Remember `entry` as `id`; returns the ids forgotten to make room. */
  set(id: number, entry: GuestEntry): number[] {
    this.delete(id);
    const evicted: number[] = [];
    while (this.entries.size >= this.max) {
      const oldest = this.entries.keys().next().value as number;
      this.delete(oldest);
      evicted.push(oldest);
    }
    this.entries.set(id, entry);
    if (entry.kind === 'portal') this.byPortal.set(portalKey(entry.appId, entry.portalId), id);
    return evicted;
  }

  delete(id: number): GuestEntry | undefined {
    const e = this.entries.get(id);
    if (!e) return undefined;
    this.entries.delete(id);
    if (e.kind === 'portal') this.byPortal.delete(portalKey(e.appId, e.portalId));
    return e;
  }
}

function portalKey(appId: string, id: string): string {
  return `${appId}\n${id}`;
}
