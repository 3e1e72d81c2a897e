import type { Bus } from '../../src/dbus/bus.js';
import { variant } from '../../src/dbus/bus.js';
import { capsFrom, type NotifyArgs, type ServerCaps } from './present.js';

/**
 * The host's notification server (GNOME Shell, KDE, dunst, mako…) on the
 * host session bus, for one VM: Notify and CloseNotification, and its
 * ActionInvoked and NotificationClosed signals. Subscribed on first use,
 * from the server's unique name only, and again whenever that name changed
 * (the server was restarted or replaced): the old subscriptions are removed,
 * and `onRestart` is told, since the old server's ids mean nothing now.
 */
export const SERVER = 'org.freedesktop.Notifications';
const PATH = '/org/freedesktop/Notifications';
const IFACE = 'org.freedesktop.Notifications';
const CALL_MS = 10_000;

export interface ServerEvents {
  onAction(hostId: number, key: string): void;
  onClosed(hostId: number, reason: number): void;
  onRestart(): void;
}

export class HostNotificationServer {
  private owner: string | undefined;
  private caps: ServerCaps = { markup: false, actions: false };
  private unsubscribe: (() => Promise<void>)[] = [];
  private ensuring: Promise<ServerCaps> | undefined;

  constructor(
    private readonly bus: Bus,
    private readonly events: ServerEvents,
  ) {}

  /** Subscribed to the current server (starting it by activation if need be); its capabilities. */
  ensure(): Promise<ServerCaps> {
    this.ensuring ??= this.follow().finally(() => (this.ensuring = undefined));
    return this.ensuring;
  }

  async notify(a: NotifyArgs): Promise<number> {
    const hints = { urgency: variant('y', a.urgency) };
    const [id] = await this.bus.call({
      destination: SERVER,
      path: PATH,
      interface: IFACE,
      member: 'Notify',
      signature: 'susssasa{sv}i',
      body: [a.appName, a.replacesId, a.icon, a.summary, a.body, a.actions, hints, a.expireTimeout],
      timeoutMs: CALL_MS,
    });
    if (typeof id !== 'number') throw new Error('the host notification server answered Notify without an id');
    return id;
  }

  async close(hostId: number): Promise<void> {
    await this.bus.call({ destination: SERVER, path: PATH, interface: IFACE, member: 'CloseNotification', signature: 'u', body: [hostId], timeoutMs: CALL_MS });
  }

  private async follow(): Promise<ServerCaps> {
    // The call first: it activates a server that is not running yet, and then the name has an owner to follow.
    const [list] = await this.bus.call({ destination: SERVER, path: PATH, interface: IFACE, member: 'GetCapabilities', timeoutMs: CALL_MS });
    const owner = await this.bus.nameOwner(SERVER);
    if (!owner) throw new Error('the host has no notification server');
    if (owner === this.owner) return this.caps;
    const restarted = this.owner !== undefined;
    await this.drop();
    const match = { sender: owner, path: PATH, interface: IFACE };
    this.unsubscribe.push(
      await this.bus.subscribe({ ...match, member: 'ActionInvoked' }, (body) => {
        const [id, key] = body;
        if (typeof id === 'number' && typeof key === 'string') this.events.onAction(id, key);
      }),
      await this.bus.subscribe({ ...match, member: 'NotificationClosed' }, (body) => {
        const [id, reason] = body;
        if (typeof id === 'number') this.events.onClosed(id, typeof reason === 'number' ? reason : 4);
      }),
    );
    this.owner = owner;
    this.caps = capsFrom(list);
    if (restarted) this.events.onRestart();
    return this.caps;
  }

  private async drop(): Promise<void> {
    const subs = this.unsubscribe.splice(0);
    for (const u of subs) await u();
    this.owner = undefined;
  }
}
