import { BusCallError } from '../../src/dbus/bus.js';
import { audit } from '../../src/host/audit.js';
import { describeRow } from '../../src/policy/model.js';
import type { HostPortalDeps, PortalHandlers } from '../portal.js';
import { DEFAULT_PERIOD_MS, NotificationAudit, PORTAL } from './counts.js';
import { HostNotificationServer } from './host-server.js';
import { LiveNotifications } from './live.js';
import { presentNotification } from './present.js';
import { DEFAULT_RATE, TokenBucket } from './rate.js';
import { ActionKey, NotificationAction, NotificationAdd, NotificationClosed, NotificationRemove, type NotificationParams, type NotificationResult } from './schema.js';

/**
 * The host half of Notification, for one VM: each notification the guest
 * sends passes the VM's rate limit, then its policy, and is shown by the
 * host's own notification server with the VM's label. Clicks and closes
 * on the host come back to the guest by its own ids; another VM's never do.
 */
export interface NotificationHostOptions {
  rate?: { burst: number; perSecond: number };
  /** How often the counts are audited. */
  periodMs?: number;
}

export function notificationHost(deps: HostPortalDeps, opts: NotificationHostOptions = {}): PortalHandlers {
  const vm = deps.vm.name;
  const log = deps.log.child({ portal: PORTAL });
  const rate = opts.rate ?? DEFAULT_RATE;
  const bucket = new TokenBucket(rate);
  const live = new LiveNotifications();
  const counts = new NotificationAudit({ vm, audit });
  setInterval(() => counts.flush(), opts.periodMs ?? DEFAULT_PERIOD_MS).unref();

  const closedInGuest = (id: number, reason: number) => deps.notify(NotificationClosed, { id, reason });

  const server = new HostNotificationServer(deps.hostBus, {
    onAction: (hostId, key) => {
      const id = live.guestId(hostId);
      // Not ours (another VM's, or the host's own), or a key we never gave the server.
      if (id === undefined || !ActionKey.safeParse(key).success) return;
      log.debug({ id, hostId, action: key }, 'an action was clicked on the host');
      deps.notify(NotificationAction, { id, action: key });
    },
    onClosed: (hostId, reason) => {
      const id = live.forgetHost(hostId);
      if (id !== undefined) closedInGuest(id, reason >= 1 && reason <= 4 ? reason : 4);
    },
    onRestart: () => {
      log.info('the host notification server changed; forgetting the notifications it showed');
      for (const id of live.clear()) closedInGuest(id, 4);
    },
  });

  async function add(n: NotificationParams): Promise<NotificationResult> {
    const request = deps.nextRequestId();
    // The rate limit first: it also bounds how many deny lines a denied guest can cause.
    if (!bucket.take()) {
      counts.limited(n.kind, () => request, rate);
      return { shown: false, reason: 'rate-limit', message: `too many notifications from VM ${vm}: the host shows ${rate.burst} at once, then ${rate.perSecond} a second` };
    }
    const d = await deps.policy.decision(PORTAL, n.kind, deps.vm);
    if (d.verdict === 'deny') {
      counts.denied(n.kind, request, d.row ? describeRow(d.row) : undefined, d.error);
      return { shown: false, reason: 'policy', message: d.error ? 'the host cannot read its policy, so it shows no notifications' : `the host's policy does not show notifications from VM ${vm}` };
    }
    try {
      const caps = await server.ensure();
      const hostId = await server.notify(presentNotification(deps.vm.label, n, caps, live.hostId(n.id) ?? 0));
      for (const gone of live.set(n.id, hostId)) closedInGuest(gone, 4);
      counts.allowed(n.kind, request);
      log.debug({ id: n.id, hostId, kind: n.kind }, 'shown on the host');
      return { shown: true };
    } catch (err) {
      counts.failed(n.kind, request);
      log.warn({ id: n.id, err: (err as Error).message }, 'the host notification server did not show it');
      const missing = err instanceof BusCallError && /ServiceUnknown|NameHasNoOwner/.test(err.errorName);
      return { shown: false, reason: 'host', message: missing ? 'the host has no notification server' : 'the host notification server did not show it' };
    }
  }

  async function remove(id: number): Promise<{ removed: boolean }> {
    const hostId = live.forgetGuest(id);
    if (hostId === undefined) return { removed: false }; // not one of this VM's live notifications
    await server.close(hostId).catch((err: Error) => log.debug({ id, hostId, err: err.message }, 'the host server could not close it'));
    return { removed: true };
  }

  return {
    methods: {
      [NotificationAdd.name]: async (params) => add(params as NotificationParams),
      [NotificationRemove.name]: async (params) => remove((params as { id: number }).id),
    },
  };
}
