import { z } from 'zod';
import { defineMethod, defineNotification } from '../../src/protocol/methods.js';
import { UsbDeviceId } from './key.js';
import { USBIP_METHODS } from './usbip-schema.js';

/**
 * Usb's protocol. The guest names a device by the id the host gave it in its
 * list and nothing else: which device that is, whether it may be had and
 * how it gets into the VM are the host's. Every string the host sends about
 * a device came from the device (its descriptors), and was made showable on
 * the host (src/usb/devices.ts showableText); the guest still treats it as
 * data.
 */

/** What the daemon's flood control answers any portal method past a VM's limits (src/host/flood.ts REFUSED). */
const FloodRefused = z.object({ response: z.literal(2), results: z.object({}).strict() }).strict();

/** A device's id while it is plugged in: bus number and device address, `b1d5`, after the name of the VM it is plugged into if not the host (`sys-usb.b1d5`); a new one at each replug. */
export const UsbId = z
  .string()
  .regex(/^(?:[a-z][a-z0-9-]{0,30}\.)?b[1-9][0-9]{0,2}d[1-9][0-9]{0,2}$/, 'a USB device id is bBUSdADDR, e.g. b1d5, or VM.bBUSdADDR for one plugged into a VM, as xdp-vm usb list shows it');
export type UsbId = z.infer<typeof UsbId>;

const Hex4 = z.string().regex(/^[0-9a-f]{4}$/);
const Hex2 = z.string().regex(/^[0-9a-f]{2}$/);
const Text = z.string().max(200);

/** free: nobody has it; here: this VM has it; elsewhere: another VM (never named to a guest). */
export const UsbState = z.enum(['free', 'here', 'elsewhere']);
export type UsbState = z.infer<typeof UsbState>;

export const UsbEntry = z
  .object({
    id: UsbId,
    /** The permission key, usb:VID/PID/ID_SERIAL, as policy rows name the device. */
    key: UsbDeviceId,
    vendorId: Hex4,
    productId: Hex4,
    vendor: Text,
    product: Text,
    serial: Text,
    /** bDeviceClass, and each interface's bInterfaceClass (what the device is when the device class is 00). */
    deviceClass: Hex2,
    interfaceClasses: z.array(Hex2).max(32),
    state: UsbState,
    /** What the user is told about it before it goes (a keyboard the host loses); empty when nothing. */
    warning: Text,
  })
  .strict();
export type UsbEntry = z.infer<typeof UsbEntry>;

/** The host devices this VM may ask for: offered ones no row denies it. */
export const UsbList = defineMethod({
  name: 'usb.list',
  direction: 'guest-to-host',
  params: z.object({}).strict(),
  result: z.union([z.object({ devices: z.array(UsbEntry).max(128) }).strict(), FloodRefused]),
});

/** Acquire: the host asks its user (unless a row decides), then attaches the device to this VM. */
export const UsbAcquire = defineMethod({
  name: 'usb.acquire',
  direction: 'guest-to-host',
  params: z.object({ id: UsbId }).strict(),
  result: z.union([z.object({ id: UsbId, key: UsbDeviceId }).strict(), FloodRefused]),
});

/** Release: the device goes back to the host. `released` is false when this VM did not have it. */
export const UsbRelease = defineMethod({
  name: 'usb.release',
  direction: 'guest-to-host',
  params: z.object({ id: UsbId }).strict(),
  result: z.union([z.object({ released: z.boolean() }).strict(), FloodRefused]),
});

export const UsbEvent = z.enum(['plugged', 'unplugged', 'attached', 'detached']);
export type UsbEvent = z.infer<typeof UsbEvent>;

/**
 * Something happened to a device this VM may ask for: plugged into or
 * unplugged from the host, attached to or detached from this VM (whoever
 * asked: the guest, the host's user, an "Always" row).
 */
export const UsbChanged = defineNotification({
  name: 'usb.changed',
  direction: 'host-to-guest',
  params: z.object({ event: UsbEvent, device: UsbEntry }).strict(),
});

export const USB_METHODS = [UsbList, UsbAcquire, UsbRelease, UsbChanged, ...USBIP_METHODS] as const;
