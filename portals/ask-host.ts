import { PortalError } from '../src/dbus/bus.js';
import type { HostLink } from '../src/guest/host-link.js';
import { ProtocolError } from '../src/protocol/messages.js';
import type { MethodDescriptor, Params, ResultOf } from '../src/protocol/methods.js';

/**
 * A guest half's call to the host for one of its D-Bus methods, with the
 * host's answer as the D-Bus error the caller gets: NotAllowed when the host
 * refused, InvalidArgument for what it does not have, Failed otherwise, and
 * Failed too when the daemon's flood gate answered for it (response 2).
 */
export const FLOODED = 'the host refused: this VM has made too many requests just now';

export function asPortalError(err: Error): PortalError {
  if (err instanceof ProtocolError && err.code === 'denied') return new PortalError('NotAllowed', err.message);
  if (err instanceof ProtocolError && err.code === 'invalid-params') return new PortalError('InvalidArgument', err.message);
  return new PortalError('Failed', err.message);
}

type Answered<R> = Exclude<R, { response: 2 }>;

export async function askHost<M extends MethodDescriptor>(host: HostLink, method: M, params: Params<M>): Promise<Answered<ResultOf<M>>> {
  const r = await host.request(method, params).catch((err: Error) => {
    throw asPortalError(err);
  });
  if (r && typeof r === 'object' && 'response' in r) throw new PortalError('Failed', FLOODED);
  return r as Answered<ResultOf<M>>;
}

/**
 * The same for the host's bus API (io.github.xdp_vm.Host1), where what the
 * caller named and the host does not have is NotFound. Throws `err` on as
 * it is when it is not a ProtocolError.
 */
export function asControlError(err: unknown): never {
  if (err instanceof ProtocolError) {
    throw new PortalError(err.code === 'invalid-params' ? 'NotFound' : err.code === 'denied' ? 'NotAllowed' : 'Failed', err.message);
  }
  throw err;
}
