import { z } from 'zod';
import { VmName } from '../../src/config/schema.js';
import { defineMethod } from '../../src/protocol/methods.js';
import { OpenableUri } from './uri.js';

/**
 * OpenURI's protocol. Both directions carry only a checked link (uri.ts):
 * never a file, a path or a descriptor.
 */

/** What the daemon's flood control answers any portal method past a VM's limits (src/host/flood.ts REFUSED). */
export const FloodRefused = z.object({ response: z.literal(2), results: z.object({}).strict() }).strict();

/** The guest asks the host to open a link where the user wants links from this VM to open. */
export const OpenUriOpen = defineMethod({
  name: 'openUri.open',
  direction: 'guest-to-host',
  params: z.object({ uri: OpenableUri }).strict(),
  result: z.union([
    z
      .object({
        opened: z.enum(['host', 'vm']),
        /** Where, in words for the guest's CLI: "the host", or the target VM's name. */
        where: z.union([z.literal('the host'), VmName]),
      })
      .strict(),
    FloodRefused,
  ]),
});

/**
 * The host asks a target VM's guest to open a link with that VM's own
 * default handler. A method, not a notification: the VM that sent the link
 * is told whether it was launched, and why not.
 */
export const OpenUriLaunch = defineMethod({
  name: 'openUri.launch',
  direction: 'host-to-guest',
  params: z.object({ uri: OpenableUri }).strict(),
  result: z.object({ launched: z.literal(true), handler: z.string().max(255).regex(/^[A-Za-z0-9_.+-]+\.desktop$/) }).strict(),
});

export const OPEN_URI_METHODS = [OpenUriOpen, OpenUriLaunch] as const;
