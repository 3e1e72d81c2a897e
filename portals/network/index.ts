import { NetworkName } from '../../src/config/schema.js';
import { definePortal } from '../portal.js';
import { NETWORK_METHODS } from './schema.js';

/**
 * Network: a VM joining one of the host's named networks (the config's
 * `networks` table). The guest asks through io.github.xdp_vm.Network1
 * (`xdp-vm net join` in the VM); the host asks its user unless a row
 * decides, then hot-plugs a NIC through the VM's device layer. Rows name the
 * network; an allow row naming it ("Always") attaches it whenever the VM
 * starts. Its guest half exports no impl.portal interface: the guest's
 * frontend has no part in it.
 */
export const NETWORK = definePortal({
  name: 'Network',
  interfaces: [],
  methods: NETWORK_METHODS,
  policy: {
    argument: NetworkName,
    describeArgument: 'a network name from the host config\'s "networks", e.g. web',
    whenNoRow: 'Network asks',
    consent: 'when no row applies, the user is asked, naming the VM and the network; allow (or "Always") attaches it whenever the VM starts, deny gives the VM no NIC',
  },
  guest: async () => (await import('./guest.js')).exportNetwork,
  host: async () => (await import('./host.js')).networkHost,
});
