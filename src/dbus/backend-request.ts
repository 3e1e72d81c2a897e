import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { BusCallError, type Bus, type Vardict } from './bus.js';
import type { PortalAnswer } from './portal-request.js';
import { asVardict } from './values.js';

/**
 * Calling a portal *backend* (org.freedesktop.impl.portal.*) directly, as the
 * frontend does: we pick the Request handle, the method returns
 * (u response, a{sv} results) only when the human is done, and giving up calls
 * impl.portal.Request.Close at that handle on the backend.
 */
const PORTAL_PATH = '/org/freedesktop/portal/desktop';
/**
 * The frontend waits for a backend forever (G_MAXINT). Bus.call always has a
 * timer, so this is the longest one Node can arm (about 24.8 days); a longer
 * value would overflow to 1 ms.
 */
const HUMAN_TIMEOUT_MS = 2 ** 31 - 1;
/** Names a backend answers Close with while its Request object is not exported yet. */
const NOT_EXPORTED_YET = new Set(['org.freedesktop.DBus.Error.UnknownObject', 'org.freedesktop.DBus.Error.UnknownMethod', 'org.freedesktop.DBus.Error.UnknownInterface']);

export interface BackendCall {
  /** The backend's bus name, e.g. org.freedesktop.impl.portal.desktop.gtk */
  destination: string;
  interface: string;
  member: string;
  /** Arguments after the handle, before the options: for FileChooser (app_id, parent_window, title). */
  args: string[];
  options: Vardict;
  signal?: AbortSignal;
}

export interface BackendAnswer extends PortalAnswer {
  /** The handle we gave the backend (for logs and tests). */
  handle: string;
}

export async function callBackendRequest(bus: Bus, call: BackendCall): Promise<BackendAnswer> {
  const sender = bus.uniqueName.replace(/^:/, '').replace(/\./g, '_');
  // The same shape the frontend uses, so a backend that inspects it sees nothing unusual.
  const handle = `${PORTAL_PATH}/request/${sender}/xdpvm_${randomBytes(8).toString('hex')}`;
  if (call.signal?.aborted) return { response: 2, results: {}, handle };
  let done = false;
  const method = bus
    .call({
      destination: call.destination,
      path: PORTAL_PATH,
      interface: call.interface,
      member: call.member,
      signature: `o${'s'.repeat(call.args.length)}a{sv}`,
      body: [handle, ...call.args, call.options],
      timeoutMs: HUMAN_TIMEOUT_MS,
    })
    .then(([response, results]): BackendAnswer => ({ response: Number(response), results: asVardict(results), handle }))
    .finally(() => (done = true));

  let onAbort: (() => void) | undefined;
  const aborted = new Promise<BackendAnswer>((resolve) => {
    onAbort = () => {
      resolve({ response: 2, results: {}, handle });
      void closeRequest(bus, call.destination, handle, () => done);
    };
    call.signal?.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([method, aborted]);
  } catch (err) {
    if (err instanceof BusCallError) throw new BackendCallError(call.destination, err);
    throw err;
  } finally {
    if (onAbort) call.signal?.removeEventListener('abort', onAbort);
    // A late reply after an abort is nobody's business; keep it from being an unhandled rejection.
    method.catch(() => undefined);
  }
}

/** The backend failed the call itself (not the human): the frontend would answer 2. */
export class BackendCallError extends Error {
  constructor(
    readonly destination: string,
    readonly busError: BusCallError,
  ) {
    super(`${destination}: ${busError.message}`);
    this.name = 'BackendCallError';
  }
}

/**
 * Close the backend's dialog. A backend exports the Request object while it
 * sets the dialog up, so a Close sent right after the call can arrive first:
 * retry briefly until it lands or the call is over anyway.
 */
async function closeRequest(bus: Bus, destination: string, handle: string, finished: () => boolean): Promise<void> {
  for (let attempt = 0; attempt < 100 && !finished(); attempt++) {
    try {
      await bus.call({ destination, path: handle, interface: 'org.freedesktop.impl.portal.Request', member: 'Close', timeoutMs: 5000 });
      return;
    } catch (err) {
      if (!(err instanceof BusCallError) || !NOT_EXPORTED_YET.has(err.errorName)) return;
      await sleep(50);
    }
  }
}
