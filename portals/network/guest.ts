import { PortalError, variant, type Bus } from '../../src/dbus/bus.js';
import { loadInterface } from '../../src/dbus/interfaces.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import type { NotificationHandler, NotificationParams } from '../../src/protocol/methods.js';
import { NETWORK_INTERFACE, NETWORK_PATH } from './names.js';
import { NetworkChanged, NetworkJoin, NetworkLeave, NetworkList } from './schema.js';
import { NetworkName } from '../../src/config/schema.js';

/**
 * The guest half of Network: io.github.xdp_vm.Network1 on the guest bus,
 * whose calls go to the host as they are (the host decides everything), and
 * its Changed signal whenever the host says a NIC came or went. The NIC
 * itself is the kernel's, and the guest's network manager or DHCP client
 * configures it; nothing here touches the guest's network config.
 */
const VERSION = 1;
const FLOODED = 'the host refused: this VM has made too many requests just now';

function asPortalError(err: Error): PortalError {
  if (err instanceof ProtocolError && err.code === 'denied') return new PortalError('NotAllowed', err.message);
  if (err instanceof ProtocolError && err.code === 'invalid-params') return new PortalError('InvalidArgument', err.message);
  return new PortalError('Failed', err.message);
}

function networkArg(raw: unknown): string {
  const parsed = NetworkName.safeParse(raw);
  if (!parsed.success) throw new PortalError('InvalidArgument', `"${String(raw).slice(0, 40)}" is not a network name: ${parsed.error.issues[0]!.message}`);
  return parsed.data;
}

export function exportNetwork(bus: Bus, host: HostLink, log: Logger): () => void {
  const iface = loadInterface(NETWORK_INTERFACE);
  const nlog = log.child({ portal: 'Network' });
  const onChanged: NotificationHandler = (params) => {
    const p = params as NotificationParams<typeof NetworkChanged>;
    nlog.info({ network: p.network, joined: p.joined, mac: p.mac }, p.joined ? 'a NIC came' : 'a NIC went');
    bus.emitSignal(NETWORK_PATH, iface, 'Changed', [p.network, p.joined, p.mac]);
  };
  host.onNotification(NetworkChanged.name, onChanged);

  const unexport = bus.export(
    NETWORK_PATH,
    iface,
    {
      List: async () => {
        const r = await host.request(NetworkList, {}).catch((err: Error) => {
          throw asPortalError(err);
        });
        if ('response' in r) throw new PortalError('Failed', FLOODED);
        return [r.networks.map((n) => [n.name, n.type, n.joined, n.description])];
      },
      Join: async (args) => {
        const network = networkArg(args[0]);
        const r = await host.request(NetworkJoin, { network }).catch((err: Error) => {
          throw asPortalError(err);
        });
        if ('response' in r) throw new PortalError('Failed', FLOODED);
        nlog.info({ network, mac: r.mac }, 'joined');
        return [r.mac];
      },
      Leave: async (args) => {
        const network = networkArg(args[0]);
        const r = await host.request(NetworkLeave, { network }).catch((err: Error) => {
          throw asPortalError(err);
        });
        if ('response' in r) throw new PortalError('Failed', FLOODED);
        return [r.left];
      },
    },
    { version: () => variant('u', VERSION) },
  );
  return () => {
    host.offNotification(NetworkChanged.name, onChanged);
    unexport();
  };
}
