import { PortalError } from '../../src/dbus/bus.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
import { NotificationAdd, NotificationRemove, type NotificationParams } from './schema.js';

/**
 * One notification to the host, for either face of the guest half. The
 * host's refusal becomes a D-Bus error with the host's reason, which a
 * libnotify app gets back from Notify; the guest's frontend only logs it
 * (it has answered the Flatpak app already).
 */
export async function forwardToHost(host: HostLink, n: NotificationParams): Promise<void> {
  let r;
  try {
    r = await host.request(NotificationAdd, n);
  } catch (err) {
    throw new PortalError('Failed', `the host is not reachable, so the notification was not shown: ${(err as Error).message}`);
  }
  if ('response' in r) throw new PortalError('NotAllowed', 'the host is refusing this VM\'s requests for now: too many at once');
  if (!r.shown) throw new PortalError(r.reason === 'host' ? 'Failed' : 'NotAllowed', `notification not shown: ${r.message}`);
}

/** Withdraw one on the host, in the background: the app is not kept waiting, and a lost link only leaves it shown. */
export function withdraw(host: HostLink, id: number, log: Logger): void {
  host.request(NotificationRemove, { id }).catch((err: Error) => log.debug({ id, err: err.message }, 'could not withdraw a notification on the host'));
}
