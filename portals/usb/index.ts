import { definePortal } from '../portal.js';
import { UsbDeviceId } from './key.js';
import { USB_METHODS } from './schema.js';

/**
 * Usb: a host USB device handed to one VM. The guest asks through
 * io.github.xdp_vm.Usb1 (`xdp-vm usb attach` in the VM); the host asks its
 * user unless a row decides, then attaches the device through the VM's
 * device layer. Rows name the device by xdg-desktop-portal's own key,
 * usb:VID/PID/SERIAL; an allow row naming it ("Always") attaches it whenever
 * the VM starts or the device is plugged in. Its guest half exports no
 * impl.portal interface: once attached, the device is on the guest's own USB
 * bus, and the guest's own Usb portal serves its apps.
 */
export const USB = definePortal({
  name: 'Usb',
  interfaces: [],
  methods: USB_METHODS,
  policy: {
    argument: UsbDeviceId,
    describeArgument: 'a device as usb:VID/PID/SERIAL, as xdp-vm usb list shows its key',
    whenNoRow: 'Usb asks',
    consent: 'when no row applies, the user is asked, naming the VM and the device; allow (or "Always") attaches it whenever the VM starts or the device is plugged in, deny keeps it on the host',
  },
  guest: async () => (await import('./guest.js')).exportUsb,
  host: async () => (await import('./host.js')).usbHost,
});
