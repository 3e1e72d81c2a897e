import { z } from 'zod';
import { defineMethod, defineNotification } from '../../src/protocol/methods.js';

/**
 * Notifications on the wire, both ways. The guest is hostile: every field is
 * capped in size and count here, and the host half cleans what it shows on
 * top of that (present.ts). The caps are wire caps, generous enough for any
 * real notification: the guest half clips to them before sending, so an app
 * with a long body still notifies, and the host cuts again to what a user
 * reads.
 *
 * Action keys never cross as the app spelled them: the guest half names an
 * app's actions `default` (the click on the notification itself) and `a0`…
 * `a7`, and keeps the app's own key, or the portal's action name and
 * target, on its side. The host's notification server only ever sees those
 * names, and a click comes back as one of them.
 */

/** Live notifications one VM may have; beyond it the oldest is forgotten on both sides. */
export const MAX_LIVE = 64;
/** Actions one notification may carry, the default action included. */
export const MAX_ACTIONS = 8;

export const WIRE_CAPS = { appName: 128, title: 512, body: 4096, label: 128 } as const;

/** A guest-chosen notification id: libnotify's own uint32 space, which the portal side shares. */
export const NotificationId = z.number().int().min(1).max(0xffffffff);

/** How the guest app asked: libnotify (org.freedesktop.Notifications) or the Flatpak portal. Also the policy argument. */
export const NOTIFICATION_KINDS = ['libnotify', 'portal'] as const;
export const NotificationKind = z.enum(NOTIFICATION_KINDS);
export type NotificationKind = z.infer<typeof NotificationKind>;

export const URGENCIES = ['low', 'normal', 'critical'] as const;
export const Urgency = z.enum(URGENCIES);
export type Urgency = z.infer<typeof Urgency>;

export const DEFAULT_ACTION = 'default';
export const ActionKey = z.string().regex(new RegExp(`^(${DEFAULT_ACTION}|a[0-${MAX_ACTIONS - 1}])$`), 'an action key is "default" or a0…a7');
export type ActionKey = z.infer<typeof ActionKey>;

/** The wire name of the app's i-th non-default action. */
export function actionKey(i: number): ActionKey {
  return `a${i}`;
}

export const Action = z.object({ key: ActionKey, label: z.string().max(WIRE_CAPS.label) }).strict();
export type Action = z.infer<typeof Action>;

export const NotificationParams = z
  .object({
    id: NotificationId,
    kind: NotificationKind,
    appName: z.string().max(WIRE_CAPS.appName),
    title: z.string().max(WIRE_CAPS.title),
    body: z.string().max(WIRE_CAPS.body),
    actions: z
      .array(Action)
      .max(MAX_ACTIONS)
      .refine((a) => new Set(a.map((x) => x.key)).size === a.length, 'action keys must be unique'),
    urgency: Urgency,
  })
  .strict();
export type NotificationParams = z.infer<typeof NotificationParams>;

export const REFUSAL_REASONS = ['policy', 'rate-limit', 'host'] as const;

/**
 * What the host did with it. The last shape is the daemon's flood gate
 * (src/host/flood.ts REFUSED), which answers every portal's methods the
 * same way when a VM has too many requests open.
 */
export const NotificationResult = z.union([
  z.object({ shown: z.literal(true) }).strict(),
  z.object({ shown: z.literal(false), reason: z.enum(REFUSAL_REASONS), message: z.string().max(300) }).strict(),
  z.object({ response: z.literal(2), results: z.object({}).strict() }).strict(),
]);
export type NotificationResult = z.infer<typeof NotificationResult>;

/** The guest shows (or replaces, same id) one notification on the host. */
export const NotificationAdd = defineMethod({
  name: 'notification.add',
  direction: 'guest-to-host',
  params: NotificationParams,
  result: NotificationResult,
});

/**
 * The guest withdraws one. An id that is not one of this VM's live ones is
 * answered `removed: false` and nothing else happens, so a guest can only
 * ever close its own notifications. (A method rather than a one-way
 * message: the guest's link sends none of those.)
 */
export const NotificationRemove = defineMethod({
  name: 'notification.remove',
  direction: 'guest-to-host',
  params: z.object({ id: NotificationId }).strict(),
  result: z.union([z.object({ removed: z.boolean() }).strict(), z.object({ response: z.literal(2), results: z.object({}).strict() }).strict()]),
});

/** The user clicked one of a notification's actions on the host. */
export const NotificationAction = defineNotification({
  name: 'notification.action',
  direction: 'host-to-guest',
  params: z.object({ id: NotificationId, action: ActionKey }).strict(),
});

/** A notification went away on the host; `reason` as the freedesktop spec's NotificationClosed (1 expired, 2 dismissed, 3 closed by a call, 4 other). */
export const NotificationClosed = defineNotification({
  name: 'notification.closed',
  direction: 'host-to-guest',
  params: z.object({ id: NotificationId, reason: z.number().int().min(1).max(4) }).strict(),
});

export const NOTIFICATION_METHODS = [NotificationAdd, NotificationRemove, NotificationAction, NotificationClosed] as const;

/**
 * `s` cut to at most `max` UTF-16 units for the wire, without splitting a
 * surrogate pair. The host cleans and caps again; this only keeps an
 * oversized but honest notification from being refused outright.
 */
export function clipForWire(s: string, max: number): string {
  if (s.length <= max) return s;
  let end = max;
  const last = s.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return s.slice(0, end);
}
