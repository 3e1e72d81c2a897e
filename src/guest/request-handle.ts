import type { Bus } from '../dbus/bus.js';
import { loadInterface } from '../dbus/interfaces.js';

/**
 * While a backend call is in progress the frontend may call
 * org.freedesktop.impl.portal.Request.Close at the handle path. Only the peer
 * that made the call (the frontend) may close it.
 */
export async function withRequestHandle<T>(bus: Bus, handle: string, caller: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const unexport = bus.export(handle, loadInterface('org.freedesktop.impl.portal.Request'), {
    Close: (_args, ctx) => {
      if (ctx.sender === caller) ac.abort(new Error('the request was closed'));
      return [];
    },
  });
  try {
    return await fn(ac.signal);
  } finally {
    unexport();
  }
}
