import type { UsbSpec } from './adapter.js';

/**
 * What the QEMU adapter sends for USB passthrough, and the words it uses,
 * kept apart from the QMP plumbing in qemu.ts. Facts of QEMU 7.2 it rests
 * on (hw/usb/host-libusb.c, util/osdep.c, monitor/fds.c, and tried against
 * this machine's QEMU):
 *
 * - usb-host is named by `hostbus` + `hostaddr` and nothing else, on
 *   purpose: with only those two QEMU opens the device at realize and
 *   device_add fails at once ("failed to find host usb device 1:99") when it
 *   is not there. Add `vendorid`/`productid` and realize takes the autoscan
 *   route instead: device_add succeeds with nothing attached, and QEMU later
 *   takes whatever device turns up matching all four. The caller has already
 *   matched the device by vendor, product and ID_SERIAL (src/usb/devices.ts);
 *   usb-host's own `serial` property is the generic USBDevice one (the serial
 *   an emulated device reports), not a match, so QEMU cannot check it.
 * - Between the caller's match and QEMU's open, a replug could put another
 *   device at that address (the kernel hands addresses out in turn, so only
 *   once the bus has numbered some 127 devices since). The descriptor route
 *   has no such window: the helper's descriptor is of that very device, and
 *   goes stale, never to another one.
 * - `hostdevice=/dev/fdset/N` works: usb-host opens `hostdevice` with
 *   QEMU's own open (qemu_open_old, O_RDWR), which for /dev/fdset/N dups the
 *   set's descriptor whose access mode is O_RDWR (an O_RDONLY one gets
 *   "Permission denied"), and hands the dup to libusb_wrap_sys_device.
 *   `hostdevice` wins over the match properties; we still pass `hostbus` and
 *   `hostaddr` with it, so that a QEMU that autoscans such a device after it
 *   vanishes (as a patch proposed upstream in 2025, for QEMU issue 3111,
 *   would) can only take that address, not any device at all.
 * - The fdset's own copy is removed right after device_add, whichever way it
 *   went: usb-host keeps its dup. QEMU closes a removed copy only while the
 *   VM runs (a paused VM's waits for the next fdset clean-up). A failed
 *   realize on this route leaks the dup inside QEMU 7.2 (it returns without
 *   closing it) until QEMU exits.
 * - A host device that vanishes is not a DEVICE_DELETED in 7.2: usb-host
 *   stays in QOM, detached from its guest port (`attached` false), and a
 *   bus+addr or descriptor device never comes back by itself. DEVICE_DELETED
 *   for a usb-host we did not remove means someone else's device_del, or the
 *   controller under it going (the guest may eject a hot-plugged one): each
 *   usb-host on it is reported then, though the controller itself is not.
 */

/** Our usb-host ids are this plus the caller's id. */
export const USB_PREFIX = 'xdpvm-usb-';
/** The one xHCI controller we hot-plug into a VM that has none. */
export const XHCI_ID = 'xdpvm-xhci';
/** What we hot-plug: the generic xHCI, 4 USB 2 and 4 USB 3 ports. */
export const XHCI_DRIVER = 'qemu-xhci';
/** The abstract QOM parent of QEMU's PCI xHCI controllers (qemu-xhci, nec-usb-xhci). */
export const PCI_XHCI_TYPE = 'pci-xhci';
export const USB_HOST_DRIVER = 'usb-host';

export function usbDeviceId(id: string): string {
  return `${USB_PREFIX}${id}`;
}

/** What QEMU can do for USB passthrough, asked once per adapter (qom-list-types). */
export interface UsbSupport {
  usbHost: boolean;
  /** Concrete PCI xHCI controller types, e.g. nec-usb-xhci, qemu-xhci. */
  xhciTypes: readonly string[];
}

/** Why this QEMU cannot attach a USB device at all; undefined when it can. */
export function usbRefusal(support: UsbSupport): string | undefined {
  if (!support.usbHost) return `this QEMU has no ${USB_HOST_DRIVER} device (it was built without libusb), so it cannot pass host USB devices through`;
  if (support.xhciTypes.length === 0) return 'this QEMU has no xHCI (USB 3) controller device, so it cannot pass host USB devices through';
  return undefined;
}

/** Why no controller can be hot-plugged when the VM has none; undefined when ours can be. */
export function xhciRefusal(support: UsbSupport): string | undefined {
  if (support.xhciTypes.includes(XHCI_DRIVER)) return undefined;
  return `the VM has no xHCI controller and this QEMU has no ${XHCI_DRIVER} device to hot-plug (it has ${support.xhciTypes.join(', ')}); start the VM with '-device ${support.xhciTypes[0] ?? 'nec-usb-xhci'}'`;
}

export function xhciArgs(port: string): Record<string, unknown> {
  return { driver: XHCI_DRIVER, id: XHCI_ID, bus: port };
}

/** device_add for the device at `bus`; by the helper's descriptor when `fdset` is given. */
export function usbHostArgs(spec: UsbSpec, bus: string, fdset?: number): Record<string, unknown> {
  return {
    driver: USB_HOST_DRIVER,
    id: usbDeviceId(spec.id),
    bus,
    hostbus: spec.hostBus,
    hostaddr: spec.hostAddress,
    ...(fdset === undefined ? {} : { hostdevice: `/dev/fdset/${fdset}` }),
  };
}

/** The device as lsusb names it: `Bus 001 Device 099 (ID 046d:c52b)`. */
export function usbName(spec: UsbSpec): string {
  const hex = (n: number) => n.toString(16).padStart(4, '0');
  const dec = (n: number) => String(n).padStart(3, '0');
  return `Bus ${dec(spec.hostBus)} Device ${dec(spec.hostAddress)} (ID ${hex(spec.vendorId)}:${hex(spec.productId)})`;
}

/** A device_add of usb-host QEMU refused, in words naming the device and what QEMU said. */
export function usbAttachFailure(spec: UsbSpec, controller: string, qemuSaid: string): string {
  const how = spec.fd === undefined ? 'by its bus and address' : "through the helper's descriptor";
  return `USB device ${spec.id}: QEMU could not attach ${usbName(spec)} ${how} on ${controller}: ${qemuSaid}. Nothing was attached; the xHCI controller stays for the next device`;
}
