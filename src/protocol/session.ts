import { z } from 'zod';
import { defineMethod, defineNotification } from './methods.js';

/** Methods of the link itself, not of any portal. */
export const Ping = defineMethod({
  name: 'session.ping',
  direction: 'guest-to-host',
  params: z.object({ seq: z.number().int().min(0).max(2 ** 53 - 1) }).strict(),
  result: z.object({ seq: z.number().int().min(0) }).strict(),
});

/** Before unplugging the VM's share, the host asks the guest to unmount it. */
export const ShareUnmount = defineMethod({
  name: 'share.unmount',
  direction: 'host-to-guest',
  params: z.object({ tag: z.string().max(36) }).strict(),
  result: z.object({ unmounted: z.boolean(), detail: z.string().max(300) }).strict(),
});

/** After plugging the share in, the host asks the guest to mount it now rather than at its next poll. */
export const ShareMount = defineMethod({
  name: 'share.mount',
  direction: 'host-to-guest',
  params: z.object({ tag: z.string().max(36) }).strict(),
  result: z.object({ mounted: z.boolean(), detail: z.string().max(300) }).strict(),
});

/** Since version 2: the portals the host serves this VM changed (a policy row came or went). */
export const PortalsChanged = defineNotification({
  name: 'session.portals',
  direction: 'host-to-guest',
  params: z.object({ portals: z.array(z.string().max(64)).max(64) }).strict(),
});

export const SESSION_METHODS = [Ping, ShareUnmount, ShareMount, PortalsChanged] as const;
