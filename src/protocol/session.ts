import { z } from 'zod';
import { FolderName } from '../host/folders/spec.js';
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

/**
 * A folder share was plugged in (or the guest connected and has it): mount it
 * at /run/xdp-vm/shares/NAME and show it in the file chooser's sidebar. A
 * guest that predates folder shares answers "unknown method", and the host
 * says so in its log.
 */
const FolderParams = z.object({ name: FolderName, tag: z.string().max(36) }).strict();
export const FolderMount = defineMethod({
  name: 'folder.mount',
  direction: 'host-to-guest',
  params: FolderParams,
  result: z.object({ mounted: z.boolean(), detail: z.string().max(300) }).strict(),
});

/** Before unplugging a folder share: unmount it and take its bookmark away. */
export const FolderUnmount = defineMethod({
  name: 'folder.unmount',
  direction: 'host-to-guest',
  params: FolderParams,
  result: z.object({ unmounted: z.boolean(), detail: z.string().max(300) }).strict(),
});

export const SESSION_METHODS = [Ping, ShareUnmount, ShareMount, PortalsChanged, FolderMount, FolderUnmount] as const;
