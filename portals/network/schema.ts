import { z } from 'zod';
import { NetworkName } from '../../src/config/schema.js';
import { defineMethod, defineNotification } from '../../src/protocol/methods.js';

/**
 * Network's protocol. The guest names a network from the host's config and
 * nothing else: what the network is, and how the NIC is made, are the host's.
 */

/** What the daemon's flood control answers any portal method past a VM's limits (src/host/flood.ts REFUSED). */
const FloodRefused = z.object({ response: z.literal(2), results: z.object({}).strict() }).strict();

const Mac = z.string().regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
export const NetworkType = z.enum(['user', 'bridge', 'vm-only']);

export const NetworkEntry = z
  .object({
    name: NetworkName,
    type: NetworkType,
    /** The host's words for it: the config's description, else one for its type. */
    description: z.string().max(200),
    joined: z.boolean(),
  })
  .strict();
export type NetworkEntry = z.infer<typeof NetworkEntry>;

/** The networks this VM may ask for (those no row denies it), and whether it is on each. */
export const NetworkList = defineMethod({
  name: 'network.list',
  direction: 'guest-to-host',
  params: z.object({}).strict(),
  result: z.union([z.object({ networks: z.array(NetworkEntry).max(64) }).strict(), FloodRefused]),
});

/** Join: the host asks the user (unless a row decides), then plugs a NIC in; the guest's own DHCP configures it. */
export const NetworkJoin = defineMethod({
  name: 'network.join',
  direction: 'guest-to-host',
  params: z.object({ network: NetworkName }).strict(),
  result: z.union([z.object({ network: NetworkName, mac: Mac }).strict(), FloodRefused]),
});

/** Leave: the NIC is unplugged and its network's backend stopped. `left` is false when it was not joined. */
export const NetworkLeave = defineMethod({
  name: 'network.leave',
  direction: 'guest-to-host',
  params: z.object({ network: NetworkName }).strict(),
  result: z.union([z.object({ left: z.boolean() }).strict(), FloodRefused]),
});

/** A NIC came or went, whoever asked (the guest, the host's CLI, an Always row at start, the VMM). */
export const NetworkChanged = defineNotification({
  name: 'network.changed',
  direction: 'host-to-guest',
  params: z.object({ network: NetworkName, joined: z.boolean(), mac: Mac }).strict(),
});

export const NETWORK_METHODS = [NetworkList, NetworkJoin, NetworkLeave, NetworkChanged] as const;
