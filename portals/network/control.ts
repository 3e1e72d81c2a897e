import { PortalError } from '../../src/dbus/bus.js';
import type { VmSession } from '../../src/host/vm-session.js';
import { asControlError } from '../ask-host.js';
import { describeNetwork } from './question.js';

/**
 * The network methods of io.github.xdp_vm.Host1, for the host's CLI and VM
 * managers: list, attach, detach. The user on the host asked, so attach asks
 * nothing more; each change is audited with reason "cli". Refusals are
 * sentences the caller can show as they are.
 */
function sessionOf(sessions: ReadonlyMap<string, VmSession>, vm: string): VmSession {
  const s = sessions.get(vm);
  if (!s) throw new PortalError('NotFound', `no VM named "${vm}"; configured: ${[...sessions.keys()].join(', ') || 'none'}`);
  if (!s.networks) throw new PortalError('Failed', 'this host daemon serves no networks');
  return s;
}

export function networkControl(sessions: ReadonlyMap<string, VmSession>) {
  return {
    /** Every configured network, with the VMs on it now. */
    ListNetworks: () => {
      const networks = [...sessions.values()][0]?.vm.networks ?? {};
      const rows: [string, string, string, string[]][] = Object.entries(networks).map(([name, net]) => [
        name,
        net.type,
        describeNetwork(net),
        [...sessions.values()].filter((s) => s.networks?.joinedNames().includes(name)).map((s) => s.vm.name),
      ]);
      return [rows];
    },
    AttachNetwork: async ([vm, network]: unknown[]) => {
      const s = sessionOf(sessions, vm as string);
      const r = await s.networks!.join(String(network), 'cli').catch(asControlError);
      return [r.mac];
    },
    DetachNetwork: async ([vm, network]: unknown[]) => {
      const s = sessionOf(sessions, vm as string);
      const left = await s.networks!.leave(String(network), 'cli').catch(asControlError);
      if (!left) throw new PortalError('NotFound', `VM "${s.vm.name}" is not on the network '${String(network).slice(0, 40)}'; see xdp-vm net list`);
      return [];
    },
  };
}
