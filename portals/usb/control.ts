import { PortalError, variant } from '../../src/dbus/bus.js';
import { asControlError } from '../ask-host.js';
import type { HostUsb } from './host-usb.js';

/**
 * The USB methods of io.github.xdp_vm.Host1, for the host's CLI and VM
 * managers: list, attach, detach. The user on the host asked, so attach asks
 * nothing more; each change is audited with reason "cli". Refusals are
 * sentences the caller can show as they are.
 */
export function usbControl(usb: HostUsb | undefined) {
  const need = () => {
    if (!usb) throw new PortalError('Failed', 'this host daemon serves no USB devices');
    return usb;
  };
  return {
    ListUsbDevices: async () => [
      (await need().hostList()).map((r) => [
          r.id,
          {
            key: variant('s', r.key),
            busid: variant('s', r.device.busid),
            'vendor-id': variant('s', r.device.vendorId),
            'product-id': variant('s', r.device.productId),
            vendor: variant('s', r.device.manufacturer ?? ''),
            product: variant('s', r.device.product ?? ''),
            serial: variant('s', r.device.serial ?? ''),
            offered: variant('b', r.offer.offered),
            note: variant('s', r.offer.offered ? (r.offer.warning ?? '') : r.offer.why),
            holder: variant('s', r.holder ?? ''),
          },
        ]),
    ],
    AttachUsb: async ([vm, device]: unknown[]) => {
      try {
        const u = need();
        const row = await u.resolve(String(device));
        const r = await u.acquire(String(vm), row.id, 'cli');
        return [r.id, row.offer.offered ? (row.offer.warning ?? '') : ''];
      } catch (err) {
        return asControlError(err);
      }
    },
    DetachUsb: async ([device]: unknown[]) => {
      try {
        const u = need();
        const row = await u.resolve(String(device));
        if (!row.holder || !(await u.release(undefined, row.id, 'cli'))) throw new PortalError('NotFound', `no VM has ${row.id} (${row.device.busid}); xdp-vm usb list shows who has what`);
        return [row.holder];
      } catch (err) {
        return asControlError(err);
      }
    },
  };
}
