import type { Bus, TypedValue, Vardict } from '../../src/dbus/bus.js';
import { loadInterface } from '../../src/dbus/interfaces.js';
import { asVardict } from '../../src/dbus/values.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
import { BACKEND_PATH } from '../file-chooser/guest.js';
import { forwardToHost, withdraw } from './guest-forward.js';
import type { GuestNotifications } from './guest-state.js';
import { actionKey, clipForWire, DEFAULT_ACTION, MAX_ACTIONS, WIRE_CAPS, type Action, type Urgency } from './schema.js';

/**
 * org.freedesktop.impl.portal.Notification for the guest's stock
 * xdg-desktop-portal, which serves Flatpak apps' org.freedesktop.portal.
 * Notification and has already checked the notification's types. The app
 * id is the frontend's word for the caller (empty for an unsandboxed one): a
 * hint shown next to the VM's label, never an identity.
 */
export interface PortalFace {
  iface: ReturnType<typeof loadInterface>;
  unexport: () => void;
}

type PortalActions = Record<string, { name: string; target?: TypedValue }>;

export function exportPortalNotification(bus: Bus, host: HostLink, state: GuestNotifications, log: Logger): PortalFace {
  const iface = loadInterface('org.freedesktop.impl.portal.Notification');
  const unexport = bus.export(BACKEND_PATH, iface, {
    AddNotification: async (args, ctx) => {
      const [appId, portalId, raw] = args as [string, string, unknown];
      const n = fromPortal(asVardict(raw));
      const id = state.portalIdFor(String(appId), String(portalId));
      await forwardToHost(host, {
        id,
        kind: 'portal',
        appName: clipForWire(String(appId), WIRE_CAPS.appName),
        title: n.title,
        body: n.body,
        actions: n.actions,
        urgency: n.urgency,
      });
      state.set(id, { kind: 'portal', appId: String(appId), portalId: String(portalId), frontend: ctx.sender, actions: n.targets });
      log.debug({ id, actions: n.actions.length }, 'a portal notification was shown on the host');
      return [];
    },
    RemoveNotification: (args) => {
      const [appId, portalId] = args as [string, string];
      const id = state.findPortal(String(appId), String(portalId));
      if (id === undefined) return [];
      state.delete(id);
      withdraw(host, id, log);
      return [];
    },
  });
  return { iface, unexport };
}

const str = (v: TypedValue | undefined): string | undefined => (v && typeof v.value === 'string' ? v.value : undefined);

/**
 * A portal notification (title, body, priority, default-action and its
 * target, buttons) as wire fields, and what each wire action key stands for.
 * Icons and sounds stay in the guest: nothing the host should load.
 */
export function fromPortal(n: Vardict): { title: string; body: string; urgency: Urgency; actions: Action[]; targets: PortalActions } {
  const actions: Action[] = [];
  const targets: PortalActions = {};
  const defaultAction = str(n['default-action']);
  if (defaultAction !== undefined) {
    actions.push({ key: DEFAULT_ACTION, label: '' });
    targets[DEFAULT_ACTION] = { name: defaultAction, ...(n['default-action-target'] ? { target: n['default-action-target'] } : {}) };
  }
  const buttons = Array.isArray(n.buttons?.value) ? (n.buttons.value as unknown[]) : [];
  for (const b of buttons) {
    if (actions.length >= MAX_ACTIONS) break;
    const button = asVardict(b);
    const label = str(button.label);
    const name = str(button.action);
    if (label === undefined || name === undefined) continue;
    const key = actionKey(actions.length - (defaultAction !== undefined ? 1 : 0));
    actions.push({ key, label: clipForWire(label, WIRE_CAPS.label) });
    targets[key] = { name, ...(button.target ? { target: button.target } : {}) };
  }
  return {
    title: clipForWire(str(n.title) ?? '', WIRE_CAPS.title),
    body: clipForWire(str(n.body) ?? '', WIRE_CAPS.body),
    urgency: urgencyOf(str(n.priority)),
    actions,
    targets,
  };
}

/** The portal's four priorities on the spec's three urgencies, as xdg-desktop-portal-gtk maps them. */
function urgencyOf(priority: string | undefined): Urgency {
  if (priority === 'low') return 'low';
  if (priority === 'high' || priority === 'urgent') return 'critical';
  return 'normal';
}
