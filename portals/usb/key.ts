import { z } from 'zod';

/**
 * A USB device's permission key, as policy rows and the permission store
 * name it: xdg-desktop-portal's own, usb:VID/PID/SERIAL (src/usb/devices.ts
 * permissionKey).
 *
 * SERIAL is udev's ID_SERIAL for the device: vendor_model[_serial], never
 * empty, at most 255 bytes, each character one udev_replace_chars keeps
 * (letters, digits, `#+-.:=@_`, a backslash of a `\x` escape, or a valid
 * non-ASCII character). So a key is one path component, with no control or
 * format characters, whatever the device said about itself.
 */
const SERIAL = /^usb:[0-9a-f]{4}\/[0-9a-f]{4}\/(?:[A-Za-z0-9#+\-.:=@_\\]|[^\x00-\x7f\p{C}])+$/u;
const KEY_HELP = 'a USB device is usb:VID/PID/SERIAL with SERIAL udev\'s ID_SERIAL, e.g. usb:1050/0407/Yubico_YubiKey_OTP+FIDO+CCID (see xdp-vm usb list)';
export const UsbDeviceId = z
  .string()
  .max(1024, KEY_HELP)
  .transform((s) => s.replace(/^usb:([0-9A-Fa-f]{4})\/([0-9A-Fa-f]{4})\//, (_, v: string, p: string) => `usb:${v.toLowerCase()}/${p.toLowerCase()}/`))
  .pipe(
    z
      .string()
      .regex(SERIAL, KEY_HELP)
      .refine((s) => Buffer.byteLength(s) - 'usb:0000/0000/'.length <= 255, 'a USB device\'s SERIAL (udev\'s ID_SERIAL) is at most 255 bytes'),
  );

