import { PortalError, variant, type Bus } from '../../src/dbus/bus.js';
import { askHost } from '../ask-host.js';
import { loadInterface } from '../../src/dbus/interfaces.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
import type { NotificationHandler, NotificationParams } from '../../src/protocol/methods.js';
import { USB_INTERFACE, USB_PATH } from './names.js';
import { UsbAcquire, UsbChanged, UsbId, UsbList, UsbRelease, type UsbEntry } from './schema.js';

/**
 * The guest half of Usb: io.github.xdp_vm.Usb1 on the guest bus, whose
 * calls go to the host as they are (the host decides everything), and its
 * DeviceEvents signal whenever the host says a device came, went, or was
 * attached or detached here. Once attached, the device is the guest
 * kernel's: nothing here touches it.
 */
const VERSION = 1;


function idArg(raw: unknown): string {
  const parsed = UsbId.safeParse(raw);
  if (!parsed.success) throw new PortalError('InvalidArgument', `"${String(raw).slice(0, 40)}" is not a USB device id: ${parsed.error.issues[0]!.message}`);
  return parsed.data;
}

/** An entry as the D-Bus properties EnumerateDevices and DeviceEvents give. */
export function usbProperties(d: UsbEntry): Record<string, ReturnType<typeof variant>> {
  return {
    key: variant('s', d.key),
    'vendor-id': variant('s', d.vendorId),
    'product-id': variant('s', d.productId),
    vendor: variant('s', d.vendor),
    product: variant('s', d.product),
    serial: variant('s', d.serial),
    class: variant('s', d.deviceClass),
    'interface-classes': variant('as', d.interfaceClasses),
    state: variant('s', d.state),
    warning: variant('s', d.warning),
  };
}

export function exportUsb(bus: Bus, host: HostLink, log: Logger): () => void {
  const iface = loadInterface(USB_INTERFACE);
  const ulog = log.child({ portal: 'Usb' });
  const onChanged: NotificationHandler = (params) => {
    const p = params as NotificationParams<typeof UsbChanged>;
    ulog.info({ event: p.event, device: p.device.id, key: p.device.key }, `USB device ${p.event}`);
    bus.emitSignal(USB_PATH, iface, 'DeviceEvents', [[[p.event, p.device.id, usbProperties(p.device)]]]);
  };
  host.onNotification(UsbChanged.name, onChanged);

  const unexport = bus.export(
    USB_PATH,
    iface,
    {
      EnumerateDevices: async () => {
        const r = await askHost(host, UsbList, {});
        return [r.devices.map((d) => [d.id, usbProperties(d)])];
      },
      AcquireDevice: async (args) => {
        const id = idArg(args[0]);
        const r = await askHost(host, UsbAcquire, { id });
        ulog.info({ device: id, key: r.key }, 'acquired');
        return [r.key];
      },
      ReleaseDevice: async (args) => {
        const id = idArg(args[0]);
        const r = await askHost(host, UsbRelease, { id });
        return [r.released];
      },
    },
    { version: () => variant('u', VERSION) },
  );
  return () => {
    host.offNotification(UsbChanged.name, onChanged);
    unexport();
  };
}
