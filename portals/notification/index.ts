import { definePortal } from '../portal.js';
import { NOTIFICATION_KINDS, NOTIFICATION_METHODS, NotificationKind } from './schema.js';

/**
 * Notification: a guest app's notifications shown on the host, labelled with
 * the VM's name, their text cleaned and capped, and a click on one of their
 * actions sent back to the app. Both ways a guest app notifies are served:
 * libnotify (org.freedesktop.Notifications on the guest's bus, which the
 * guest half owns) and the Flatpak portal (impl.portal.Notification behind
 * the guest's stock frontend). Rate-limited per VM; never asks.
 */
export const NOTIFICATION = definePortal({
  name: 'Notification',
  interfaces: ['org.freedesktop.impl.portal.Notification'],
  methods: NOTIFICATION_METHODS,
  // Its own token bucket (rate.ts): notifications are many and small, and must not starve the VM's file dialogs.
  ownRateLimit: true,
  policy: {
    argument: NotificationKind,
    describeArgument: NOTIFICATION_KINDS.join(' or '),
    whenNoRow: 'Notification shows them',
    consent: 'it never asks: a deny row stops the VM\'s notifications, from libnotify or portal apps only with that argument, or all of them with none (ask counts as allow)',
  },
  guest: async () => (await import('./guest.js')).exportNotification,
  host: async () => (await import('./host.js')).notificationHost,
});
