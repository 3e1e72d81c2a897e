import { isTypedValue, type Bus } from '../../src/dbus/bus.js';
import { loadInterface } from '../../src/dbus/interfaces.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
import { VERSION } from '../../src/version.js';
import { forwardToHost, withdraw } from './guest-forward.js';
import type { GuestNotifications } from './guest-state.js';
import { actionKey, clipForWire, DEFAULT_ACTION, MAX_ACTIONS, WIRE_CAPS, type Action, type Urgency } from './schema.js';

/**
 * org.freedesktop.Notifications on the guest's session bus, as libnotify,
 * notify-send and most unsandboxed apps use it (the Desktop Notifications
 * Specification 1.2). The guest half owns the well-known name while it is
 * exported, so the VM needs no notification daemon of its own; if one
 * already owns it, that one keeps it and only the portal face is served.
 */
export const NOTIFICATIONS_NAME = 'org.freedesktop.Notifications';
export const NOTIFICATIONS_PATH = '/org/freedesktop/Notifications';
const SPEC_VERSION = '1.2';

/** What we can do: actions, and a body (plain: the host escapes any markup, so a client must not rely on it). */
const CAPABILITIES = ['actions', 'body'];

export interface LibnotifyFace {
  iface: ReturnType<typeof loadInterface>;
  unexport: () => void;
}

export function exportLibnotify(bus: Bus, host: HostLink, state: GuestNotifications, log: Logger): LibnotifyFace {
  const iface = loadInterface('org.freedesktop.Notifications');
  const unexport = bus.export(NOTIFICATIONS_PATH, iface, {
    GetCapabilities: () => [CAPABILITIES],
    GetServerInformation: () => ['xdg-desktop-portal-vm', 'xdp-vm', VERSION, SPEC_VERSION],
    Notify: async (args, ctx) => {
      const [appName, replacesId, , summary, body, rawActions, hints] = args as [string, number, string, string, string, unknown, unknown, number];
      const existing = replacesId ? state.get(replacesId) : undefined;
      const id = existing?.kind === 'libnotify' ? replacesId : state.allocate();
      const { actions, keys } = actionsFrom(rawActions);
      await forwardToHost(host, {
        id,
        kind: 'libnotify',
        appName: clipForWire(String(appName), WIRE_CAPS.appName),
        title: clipForWire(String(summary), WIRE_CAPS.title),
        body: clipForWire(String(body), WIRE_CAPS.body),
        actions,
        urgency: urgencyFrom(hints),
      });
      state.set(id, { kind: 'libnotify', sender: ctx.sender, keys });
      log.debug({ id, actions: actions.length }, 'a libnotify notification was shown on the host');
      return [id];
    },
    CloseNotification: (args) => {
      const [id] = args as [number];
      const e = state.get(id);
      if (e?.kind !== 'libnotify') return [];
      state.delete(id);
      withdraw(host, id, log);
      bus.emitSignal(NOTIFICATIONS_PATH, iface, 'NotificationClosed', [id, 3], e.sender);
      return [];
    },
  });
  return { iface, unexport };
}

/**
 * The spec's flat action list (key, label, key, label…) as wire actions and
 * the app's keys they stand for. An odd last element, repeated keys and
 * actions past the cap are dropped: the notification is still shown.
 */
export function actionsFrom(raw: unknown): { actions: Action[]; keys: Record<string, string> } {
  const list = Array.isArray(raw) ? raw.filter((x): x is string => typeof x === 'string') : [];
  const actions: Action[] = [];
  const keys: Record<string, string> = {};
  const seen = new Set<string>();
  let n = 0;
  for (let i = 0; i + 1 < list.length && actions.length < MAX_ACTIONS; i += 2) {
    const appKey = list[i]!;
    if (seen.has(appKey)) continue;
    seen.add(appKey);
    const key = appKey === DEFAULT_ACTION ? DEFAULT_ACTION : actionKey(n++);
    actions.push({ key, label: clipForWire(list[i + 1]!, WIRE_CAPS.label) });
    keys[key] = appKey;
  }
  return { actions, keys };
}

/** The `urgency` hint (a byte: 0 low, 1 normal, 2 critical); anything else is normal. */
export function urgencyFrom(hints: unknown): Urgency {
  const v = hints && typeof hints === 'object' ? (hints as Record<string, unknown>).urgency : undefined;
  const n = isTypedValue(v) ? v.value : undefined;
  return n === 0 ? 'low' : n === 2 ? 'critical' : 'normal';
}
