import { guestText } from '../../src/guest-input.js';
import { DEFAULT_ACTION, type NotificationParams, type Urgency } from './schema.js';

/**
 * What the user sees of a guest's notification on the host: the VM's label
 * (from the host's config, never from the guest) on the app name and the
 * summary, the guest's text made harmless and cut to what a notification
 * shows, and its actions with cleaned labels. The result is the argument list
 * of the host server's org.freedesktop.Notifications.Notify.
 */
export const SHOWN_CAPS = { appName: 48, title: 120, body: 1000, bodyLines: 12, label: 40 } as const;

/** What the host's notification server said it can do (GetCapabilities). */
export interface ServerCaps {
  /** `body-markup`: the server parses the body as markup, so guest text must be escaped. */
  markup: boolean;
  /** `actions`: the server shows actions; without it, none are sent. */
  actions: boolean;
}

export interface NotifyArgs {
  appName: string;
  replacesId: number;
  icon: string;
  summary: string;
  body: string;
  /** Flat, as the spec wants it: key, label, key, label… */
  actions: string[];
  urgency: number;
  expireTimeout: number;
}

const URGENCY_BYTE: Record<Urgency, number> = { low: 0, normal: 1, critical: 2 };

/**
 * The body is markup to a server with `body-markup` (a subset of HTML: `<b>`,
 * `<a href>`, `<img>`): escaped, a guest's tags show as text and cannot
 * fetch, link or restyle. The summary is plain text by the spec, so it is
 * never escaped (a server would show `&amp;`).
 */
export function escapeMarkup(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function presentNotification(label: string, n: NotificationParams, caps: ServerCaps, replacesId = 0): NotifyArgs {
  const app = guestText(n.appName, { max: SHOWN_CAPS.appName });
  const title = guestText(n.title, { max: SHOWN_CAPS.title });
  const body = guestText(n.body, { max: SHOWN_CAPS.body, multiline: true, maxLines: SHOWN_CAPS.bodyLines });
  const actions = caps.actions ? n.actions.flatMap((a) => [a.key, actionLabel(a.key, a.label)]) : [];
  return {
    appName: app ? `${label}: ${app}` : label,
    replacesId,
    // A guest's icon is a name or a path in the guest: nothing the host should load.
    icon: '',
    summary: title ? `[${label}] ${title}` : `[${label}]`,
    body: caps.markup ? escapeMarkup(body) : body,
    actions,
    urgency: URGENCY_BYTE[n.urgency],
    expireTimeout: -1,
  };
}

function actionLabel(key: string, label: string): string {
  const shown = guestText(label, { max: SHOWN_CAPS.label });
  if (shown) return shown;
  return key === DEFAULT_ACTION ? '' : 'Action';
}

/** GetCapabilities' answer as the two facts we act on. */
export function capsFrom(list: unknown): ServerCaps {
  const caps = Array.isArray(list) ? list.filter((c): c is string => typeof c === 'string') : [];
  return { markup: caps.includes('body-markup'), actions: caps.includes('actions') };
}
