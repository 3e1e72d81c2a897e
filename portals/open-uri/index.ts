import { z } from 'zod';
import { definePortal } from '../portal.js';
import { OPEN_URI_METHODS } from './schema.js';
import { OPEN_URI_SCHEMES } from './uri.js';

/**
 * OpenURI: a link clicked in a VM opens where the user wants links from that
 * VM to open: on the host, with the host's default handler, or in another VM,
 * with that VM's (Qubes' qvm-open-in-vm). Rows per scheme decide whether it
 * opens at all; the config's openUri table decides where. Its guest half
 * exports no impl.portal interface (the guest's frontend has no part in it)
 * but io.github.xdp_vm.OpenUri1, which the guest's "Open on host" handler calls.
 */
export const OPEN_URI = definePortal({
  name: 'OpenURI',
  interfaces: [],
  methods: OPEN_URI_METHODS,
  policy: {
    argument: z.enum(OPEN_URI_SCHEMES),
    describeArgument: OPEN_URI_SCHEMES.join(', ') + ' (the link\'s scheme)',
    whenNoRow: 'OpenURI asks',
    consent: 'when no row applies, the user is asked, with the link\'s host and where it would open; allow opens it without asking, deny refuses it; where it opens is the config\'s openUri table, not a row',
  },
  guest: async () => (await import('./guest.js')).exportOpenUri,
  host: async () => (await import('./host.js')).openUriHost,
});
