import { z } from 'zod';
import { defineMethod } from '../../src/protocol/methods.js';
import { busIdProblem } from '../../src/helper/commands.js';
import { MAX_PORT_NAME, portNameProblem } from '../../src/guest/vport.js';
import { VSOCK_RESERVED_BELOW } from '../../src/usb/usbip.js';

/**
 * USB/IP between VMs: what the host asks the root agents of a provider VM
 * (Qubes' sys-usb: its own devices, and exporting one) and of the VM that
 * gets a device (importing it). Every answer from a guest is checked here,
 * at the trust boundary: a provider VM is a guest like any other, and what
 * it says of its devices is the devices' own words, repeated by a VM that
 * may lie. The host makes the strings showable again before using them.
 */
const BusId = z.string().max(32).refine((s) => busIdProblem(s) === undefined, 'a USB bus id is BUS-PORT[.PORT]..., e.g. 1-2 or 3-1.4');
const PortName = z
  .string()
  .max(MAX_PORT_NAME)
  .refine((s) => portNameProblem(s) === undefined, 'a channel name is letters, digits, ".", "_" and "-"');
/** A vsock channel's port: a reserved one (src/usb/usbip.ts UsbipChannel). */
const VsockPort = z.number().int().min(1).max(VSOCK_RESERVED_BELOW - 1);
/** `shape` plus exactly one of the two channels, and nothing else. */
const withChannel = <T extends z.ZodRawShape>(shape: T) =>
  z.union([z.object({ ...shape, port: PortName }).strict(), z.object({ ...shape, vsockPort: VsockPort }).strict()]);
const Hex4 = z.string().regex(/^[0-9a-f]{4}$/);
const Hex2 = z.string().regex(/^[0-9a-f]{2}$/);
/** Device text, before it is made showable again on the host. */
const Text = z.string().max(512);

export const ProvidedInterface = z
  .object({ name: z.string().max(64), number: z.number().int().min(0).max(255), class: Hex2, subclass: Hex2, protocol: Hex2, driver: z.string().max(64).optional() })
  .strip();

export const ProvidedDevice = z
  .object({
    busid: BusId,
    busnum: z.number().int().min(1).max(255),
    devnum: z.number().int().min(1).max(127),
    vendorId: Hex4,
    productId: Hex4,
    bcdDevice: Hex4.optional(),
    manufacturer: Text.optional(),
    product: Text.optional(),
    serial: Text.optional(),
    deviceClass: Hex2,
    configuration: z.number().int().min(0).max(255).optional(),
    interfaces: z.array(ProvidedInterface).max(32),
    speed: z.string().max(8).optional(),
    removable: z.enum(['removable', 'fixed', 'unknown']),
    idSerial: z.string().min(1).max(255),
  })
  .strip();
export type ProvidedDevice = z.infer<typeof ProvidedDevice>;

/** The provider VM's own USB devices. */
export const UsbipDevices = defineMethod({
  name: 'usbip.devices',
  direction: 'host-to-guest',
  params: z.object({}).strict(),
  result: z.object({ devices: z.array(ProvidedDevice).max(64) }).strict(),
});

/** Export BUSID on the channel the host hot-plugged into the provider VM, or on its vsock connection. */
export const UsbipExport = defineMethod({
  name: 'usbip.export',
  direction: 'host-to-guest',
  params: withChannel({ busid: BusId }),
  result: z.object({ devid: z.number().int().min(0).max(0xffffffff), speed: z.number().int().min(1).max(6) }).strict(),
});

export const UsbipUnexport = defineMethod({
  name: 'usbip.unexport',
  direction: 'host-to-guest',
  params: z.object({ busid: BusId }).strict(),
  result: z.object({}).strict(),
});

/** Import the device the host relays on the channel (or sends on its vsock connection): vhci-hcd's attach. */
export const UsbipImport = defineMethod({
  name: 'usbip.import',
  direction: 'host-to-guest',
  params: withChannel({ devid: z.number().int().min(0).max(0xffffffff), speed: z.number().int().min(1).max(6) }),
  result: z.object({ vhciPort: z.number().int().min(0).max(1023) }).strict(),
});

export const UsbipUnimport = defineMethod({
  name: 'usbip.unimport',
  direction: 'host-to-guest',
  params: z.object({ vhciPort: z.number().int().min(0).max(1023) }).strict(),
  result: z.object({}).strict(),
});

export const USBIP_METHODS = [UsbipDevices, UsbipExport, UsbipUnexport, UsbipImport, UsbipUnimport] as const;
