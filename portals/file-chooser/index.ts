import { z } from 'zod';
import { definePortal } from '../portal.js';
import { FILE_CHOOSER_METHODS } from './schema.js';

/**
 * FileChooser: an app in the VM opens or saves host files through the host's
 * own file dialog, and each chosen file becomes a document of the VM's view.
 */
export const FILE_CHOOSER = definePortal({
  name: 'FileChooser',
  interfaces: ['org.freedesktop.impl.portal.FileChooser'],
  methods: FILE_CHOOSER_METHODS,
  policy: {
    argument: z.enum(['open', 'save', 'save-files']),
    describeArgument: 'open, save or save-files',
    whenNoRow: 'FileChooser shows the file dialog',
    consent: 'the host file dialog is itself the consent, so allow and ask both show it, and deny answers the VM at once with no dialog',
  },
  guest: async () => (await import('./guest.js')).exportFileChooser,
  host: async () => (await import('./host.js')).fileChooserHost,
});
