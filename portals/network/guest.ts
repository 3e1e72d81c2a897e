import { PortalError, variant, type Bus } from '../../src/dbus/bus.js';
import { askHost } from '../ask-host.js';
import { loadInterface } from '../../src/dbus/interfaces.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
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
        const r = await askHost(host, NetworkList, {});
        return [r.networks.map((n) => [n.name, n.type, n.joined, n.description])];
      },
      Join: async (args) => {
        const network = networkArg(args[0]);
        const r = await askHost(host, NetworkJoin, { network });
        nlog.info({ network, mac: r.mac }, 'joined');
        return [r.mac];
      },
      Leave: async (args) => {
        const network = networkArg(args[0]);
        const r = await askHost(host, NetworkLeave, { network });
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
