import { z } from 'zod';
import { definePortal } from '../portal.js';

/**
 * Usb: a host USB device handed to one VM. For now its policy rows only,
 * so a user can set them ahead; the portal itself (guest API, consent,
 * attach) is issue 10's. Keys are xdg-desktop-portal's own, usb:VID/PID/SERIAL.
 */
const UsbDeviceId = z
  .string()
  .transform((s) => s.replace(/^usb:([0-9A-Fa-f]{4})\/([0-9A-Fa-f]{4})\//, (_, v: string, p: string) => `usb:${v.toLowerCase()}/${p.toLowerCase()}/`))
  .pipe(z.string().regex(/^usb:[0-9a-f]{4}\/[0-9a-f]{4}\/[\x21-\x7e]{0,126}$/, 'a USB device is usb:VID/PID/SERIAL, e.g. usb:1050/0407/0012345678 (SERIAL may be empty)'));

export const USB = definePortal({
  name: 'Usb',
  interfaces: [],
  methods: [],
  policy: { argument: UsbDeviceId, describeArgument: 'a device as usb:VID/PID/SERIAL', whenNoRow: 'Usb asks', consent: 'when no row applies, the user is asked' },
});
