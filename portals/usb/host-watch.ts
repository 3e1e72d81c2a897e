import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../src/log.js';
import { watchUsbDevices } from '../../src/usb/devices.js';
import type { HostUsb } from './host-usb.js';

/**
 * The host's USB plugging and unplugging, told to HostUsb: guests hear of
 * devices as they come and go, "Always" rows re-attach a replugged device,
 * and a device that goes is taken from its VM. Without udevadm the devices
 * are still listed at each request; only these events are missed, and the
 * log says so once.
 */
export function watchHostUsb(usb: HostUsb, log: Logger, sysfs = '/sys'): () => void {
  if (!existsSync(path.join(sysfs, 'bus', 'usb'))) {
    log.info('this host has no USB bus (/sys/bus/usb is absent): no host USB devices to offer');
    return () => undefined;
  }
  try {
    const watch = watchUsbDevices((change) => void usb.onHostChange(change).catch((err: Error) => log.error({ err: err.message, change }, 'could not follow a USB device plugged in or out')));
    watch.ready.then(
      () => log.info('following USB devices plugged in and out'),
      (err: Error) => log.warn({ err: err.message }, 'USB devices plugged in or out will not be noticed'),
    );
    return () => watch.close();
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'USB devices plugged in or out will not be noticed');
    return () => undefined;
  }
}
