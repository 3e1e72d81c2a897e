import { z } from 'zod';
import { definePortal } from '../portal.js';

/**
 * Network: a VM joining a host network. For now its policy rows only, so a
 * user can set them ahead; the portal itself is issue 11's.
 */
export const NETWORK = definePortal({
  name: 'Network',
  interfaces: [],
  methods: [],
  policy: {
    argument: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'a network is a host bridge name: 1-15 letters, digits, "_", "." or "-"'),
    describeArgument: 'a host bridge name, e.g. br0',
    whenNoRow: 'Network asks',
    consent: 'when no row applies, the user is asked',
  },
});
