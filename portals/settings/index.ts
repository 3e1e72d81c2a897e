import { z } from 'zod';
import { definePortal } from '../portal.js';
import { SETTINGS_METHODS, SETTINGS_NAMESPACES } from './schema.js';

/**
 * Settings: the host's look (colour scheme, accent, contrast, fonts, text
 * scaling) mirrored into the VM, live, so its apps follow the host. Only the
 * allow-listed keys of schema.ts cross. Nothing is asked: a deny row stops
 * the mirror, for one namespace or all.
 */
export const SETTINGS = definePortal({
  name: 'Settings',
  interfaces: ['org.freedesktop.impl.portal.Settings'],
  methods: SETTINGS_METHODS,
  policy: {
    argument: z.enum(SETTINGS_NAMESPACES),
    describeArgument: SETTINGS_NAMESPACES.join(' or '),
    whenNoRow: 'Settings mirrors the host\'s look',
    consent: 'it never asks: only the look crosses (colour scheme, accent, contrast, fonts), and a deny row stops it for that namespace or, with no argument, altogether',
  },
  guest: async () => (await import('./guest.js')).exportSettings,
  host: async () => (await import('./host.js')).settingsHost,
});
