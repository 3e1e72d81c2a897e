import { randomBytes } from 'node:crypto';
import { asVardict } from './values.js';
import { BusCallError, PortalError, variant, type Bus, type Vardict } from './bus.js';

/**
 * Calling a method of the host's own portal frontend (org.freedesktop.portal.*)
 * that answers through a Request object: predict the handle, subscribe to its
 * Response from the frontend's unique name only (a forged signal from any other
 * peer is ignored), call, and close the Request if the caller gives up.
 */
const PORTAL = 'org.freedesktop.portal.Desktop';
const PORTAL_PATH = '/org/freedesktop/portal/desktop';

export interface PortalAnswer {
  response: number;
  results: Vardict;
}

/** The frontend's unique name, starting it first if need be. */
export async function portalOwner(bus: Bus): Promise<string> {
  let owner = await bus.nameOwner(PORTAL);
  if (!owner) {
    // Activate it: the frontend is D-Bus activated on demand.
    await bus.call({ destination: PORTAL, path: PORTAL_PATH, interface: 'org.freedesktop.DBus.Peer', member: 'Ping', timeoutMs: 20_000 });
    owner = await bus.nameOwner(PORTAL);
  }
  if (!owner) throw new PortalError('Failed', 'the host portal frontend (xdg-desktop-portal) is not running');
  return owner;
}

export interface PortalCall {
  interface: string;
  member: string;
  signature: string;
  /** Arguments before the trailing options vardict. */
  args: unknown[];
  options: Vardict;
  signal?: AbortSignal;
  /** How long a human may take; the request is closed after it. */
  timeoutMs?: number;
}

export async function callPortalRequest(bus: Bus, call: PortalCall): Promise<PortalAnswer> {
  const owner = await portalOwner(bus);
  const token = `xdpvm_${randomBytes(8).toString('hex')}`;
  const sender = bus.uniqueName.replace(/^:/, '').replace(/\./g, '_');
  const handle = `${PORTAL_PATH}/request/${sender}/${token}`;
  let settle!: (a: PortalAnswer) => void;
  const answered = new Promise<PortalAnswer>((resolve) => (settle = resolve));
  const unsubscribe = await bus.subscribe({ sender: owner, path: handle, interface: 'org.freedesktop.portal.Request', member: 'Response' }, (body) =>
    settle({ response: Number(body[0]), results: asVardict(body[1]) }),
  );
  const close = () =>
    bus.call({ destination: owner, path: handle, interface: 'org.freedesktop.portal.Request', member: 'Close', timeoutMs: 5000 }).catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const onAbort = () => {
    void close();
    settle({ response: 2, results: {} });
  };
  try {
    if (call.signal?.aborted) return { response: 2, results: {} };
    call.signal?.addEventListener('abort', onAbort, { once: true });
    const [returned] = await bus.call({
      destination: PORTAL,
      path: PORTAL_PATH,
      interface: call.interface,
      member: call.member,
      signature: call.signature,
      body: [...call.args, { ...call.options, handle_token: variant('s', token) }],
    });
    if (returned !== handle) throw new PortalError('Failed', `the host portal used handle ${String(returned)}, not ${handle}; it is too old`);
    if (call.timeoutMs) {
      timer = setTimeout(() => {
        void close();
        settle({ response: 2, results: {} });
      }, call.timeoutMs);
    }
    return await answered;
  } catch (err) {
    if (err instanceof BusCallError) throw new PortalError('Failed', `host portal: ${err.message}`);
    throw err;
  } finally {
    clearTimeout(timer);
    call.signal?.removeEventListener('abort', onAbort);
    await unsubscribe();
  }
}
