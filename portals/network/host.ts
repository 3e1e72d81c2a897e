import { ProtocolError } from '../../src/protocol/messages.js';
import type { Params } from '../../src/protocol/methods.js';
import type { HostPortalDeps, PortalHandlers } from '../portal.js';
import { NetworkJoin, NetworkLeave, NetworkList } from './schema.js';

/**
 * The host half of Network: the guest's three questions, answered by the
 * VM's VmNetworks (vm-networks.ts), which the VM's session owns because the
 * host's CLI and the VM's start reach it too.
 */
export function networkHost(deps: HostPortalDeps): PortalHandlers {
  const networks = () => {
    if (!deps.networks) throw new ProtocolError('failed', 'this host daemon serves no networks');
    return deps.networks;
  };
  return {
    methods: {
      [NetworkList.name]: async () => ({ networks: await networks().list() }),
      [NetworkJoin.name]: async (params, ctx) => networks().join((params as Params<typeof NetworkJoin>).network, 'guest', ctx.signal),
      [NetworkLeave.name]: async (params) => ({ left: await networks().leave((params as Params<typeof NetworkLeave>).network, 'guest') }),
    },
  };
}
