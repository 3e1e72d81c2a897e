import type { Network, NetworkName } from '../../src/config/schema.js';
import type { ConsentDetail } from '../../src/consent/contract.js';

/**
 * What each kind of network gives a VM, in the host's words: for the consent
 * dialog, `xdp-vm net list` and the guest's List. Nothing here comes from
 * the guest but the network's name, which the config's rule already limits
 * to [a-z0-9-].
 */
export function kindInWords(net: Network): string {
  switch (net.type) {
    case 'user':
      return 'user-mode: outbound only, through the host\'s own connection';
    case 'bridge':
      return `bridge ${net.bridge}: it will be reachable by other machines on that network`;
    case 'vm-only':
      return 'VM-only: the VMs on it and the host, no way out';
  }
}

export function describeNetwork(net: Network): string {
  return net.description ?? kindInWords(net);
}

export interface NetworkQuestion {
  summary: string;
  details: ConsentDetail[];
}

export function joinQuestion(vmLabel: string, name: NetworkName, net: Network): NetworkQuestion {
  const details: ConsentDetail[] = [{ label: 'Network', value: net.description ? `${name}: ${net.description}` : name }];
  if (net.type === 'user') {
    details.push({ label: 'Reaches', value: 'the internet and anything your computer can reach, as your computer, including services on this computer\'s own loopback' });
    details.push({
      label: 'Reachable from',
      value: net.forwards.length ? `only this computer, on ${forwardsInWords(net.forwards)}` : 'nowhere: nothing can connect to it',
    });
  } else if (net.type === 'bridge') {
    details.push({ label: 'Reaches', value: `every machine on the network of this computer's bridge ${net.bridge}, and they can reach it` });
  } else {
    details.push({ label: 'Reaches', value: `only the other VMs on '${name}' and this computer, and they can reach it; nothing beyond` });
  }
  details.push({ label: 'Lasts', value: 'until it leaves or stops; "Always" joins it whenever it starts' });
  return { summary: `${vmLabel} wants to join the network '${name}' (${kindInWords(net)})`, details };
}

const SHOWN_FORWARDS = 6;
function forwardsInWords(forwards: readonly { host: number; guest: number }[]): string {
  const shown = forwards.slice(0, SHOWN_FORWARDS).map((f) => `port ${f.host} → its port ${f.guest}`);
  const more = forwards.length - shown.length;
  return shown.join(', ') + (more > 0 ? ` and ${more} more` : '');
}
