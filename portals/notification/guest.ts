import type { Bus } from '../../src/dbus/bus.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
import type { NotificationHandler, NotificationParams as NoteParams } from '../../src/protocol/methods.js';
import { BACKEND_PATH } from '../file-chooser/guest.js';
import { exportLibnotify, NOTIFICATIONS_NAME, NOTIFICATIONS_PATH } from './guest-libnotify.js';
import { exportPortalNotification } from './guest-portal.js';
import { GuestNotifications } from './guest-state.js';
import { NotificationAction, NotificationClosed } from './schema.js';

/**
 * The guest half of Notification: both faces a guest app notifies through
 * (libnotify's org.freedesktop.Notifications, under its well-known name,
 * and impl.portal.Notification behind the stock frontend), one table of
 * live notifications, and the host's clicks and closes turned back into
 * each face's own signals, sent only to the connection that notified.
 */
export function exportNotification(bus: Bus, host: HostLink, log: Logger): () => void {
  const nlog = log.child({ portal: 'Notification' });
  const state = new GuestNotifications();
  const libnotify = exportLibnotify(bus, host, state, nlog);
  const portal = exportPortalNotification(bus, host, state, nlog);

  const onAction: NotificationHandler = (params) => {
    const { id, action } = params as NoteParams<typeof NotificationAction>; // checked against its schema by the link
    const e = state.get(id);
    if (e?.kind === 'libnotify') {
      const key = e.keys[action];
      if (key !== undefined) bus.emitSignal(NOTIFICATIONS_PATH, libnotify.iface, 'ActionInvoked', [id, key], e.sender);
    } else if (e?.kind === 'portal') {
      const a = e.actions[action];
      if (a) bus.emitSignal(BACKEND_PATH, portal.iface, 'ActionInvoked', [e.appId, e.portalId, a.name, a.target ? [a.target] : []], e.frontend);
    }
  };
  const onClosed: NotificationHandler = (params) => {
    const { id, reason } = params as NoteParams<typeof NotificationClosed>;
    const e = state.delete(id);
    if (e?.kind === 'libnotify') bus.emitSignal(NOTIFICATIONS_PATH, libnotify.iface, 'NotificationClosed', [id, reason], e.sender);
  };
  host.onNotification(NotificationAction.name, onAction);
  host.onNotification(NotificationClosed.name, onClosed);

  // The name last, once there is something behind it; released when unexported, even if that comes first.
  let unexported = false;
  const owned = bus.requestName(NOTIFICATIONS_NAME).then(
    () => {
      if (unexported) return void releaseQuietly();
      nlog.info({ name: NOTIFICATIONS_NAME }, 'serving libnotify apps');
    },
    (err: Error) => nlog.warn({ err: err.message }, 'not serving libnotify apps: another notification server has the name; only portal notifications reach the host'),
  );
  const releaseQuietly = () => bus.releaseName(NOTIFICATIONS_NAME).catch((err: Error) => nlog.debug({ err: err.message }, 'could not release the name'));

  return () => {
    unexported = true;
    void owned.then(releaseQuietly);
    libnotify.unexport();
    portal.unexport();
    host.offNotification(NotificationAction.name, onAction);
    host.offNotification(NotificationClosed.name, onClosed);
  };
}
