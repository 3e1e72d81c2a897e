import type { ConsentDetail } from '../../src/consent/contract.js';
import type { UsbHostDevice } from '../../src/usb/devices.js';

/**
 * The host's words about one USB device, for the consent dialog, `xdp-vm
 * usb list` and the guest's list. Names come from the device's own
 * descriptors, already made showable (src/usb/devices.ts showableText), and
 * are quoted as what the device calls itself.
 */
export type Named = Pick<UsbHostDevice, 'vendorId' | 'productId' | 'product' | 'manufacturer' | 'serial' | 'busid'> & { source?: string };

/** `'YubiKey 5 NFC' (1050:0407)`, or `a USB device (1050:0407)` for one that names nothing. */
export function deviceInWords(dev: Named): string {
  const ids = `(${dev.vendorId}:${dev.productId})`;
  return dev.product ? `'${dev.product}' ${ids}` : `a USB device ${ids}`;
}

export interface UsbQuestion {
  summary: string;
  details: ConsentDetail[];
}

export function acquireQuestion(vmLabel: string, dev: Named, warning: string | undefined): UsbQuestion {
  const details: ConsentDetail[] = [];
  if (warning) details.push({ label: 'Warning', value: warning });
  details.push({ label: 'Device', value: [dev.manufacturer, dev.product].filter(Boolean).join(' ') || 'it gives no name' });
  if (dev.serial) details.push({ label: 'Serial number', value: dev.serial });
  details.push({ label: 'Plugged into', value: dev.source ? `USB port ${dev.busid} of VM "${dev.source}", which passes it on through this computer` : `USB port ${dev.busid} of this computer` });
  details.push({ label: 'While it has it', value: 'this computer cannot use the device, and the VM can do anything the device can' });
  details.push({ label: 'Lasts', value: 'until it is detached, unplugged, or the VM stops; "Always" attaches it whenever the VM starts and whenever the device is plugged in' });
  return { summary: `${vmLabel} wants to use the USB device ${deviceInWords(dev)}`, details };
}
