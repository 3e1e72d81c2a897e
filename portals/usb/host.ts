import { ProtocolError } from '../../src/protocol/messages.js';
import type { Params } from '../../src/protocol/methods.js';
import type { HostPortalDeps, PortalHandlers } from '../portal.js';
import { UsbAcquire, UsbList, UsbRelease } from './schema.js';

/**
 * The host half of Usb: the guest's three questions, answered by the
 * daemon's one HostUsb (host-usb.ts), which every VM shares because a device
 * goes to one VM at a time. The VM is the one this link belongs to, never a
 * name the guest sends.
 */
export function usbHost(deps: HostPortalDeps): PortalHandlers {
  const usb = () => {
    if (!deps.usb) throw new ProtocolError('failed', 'this host daemon serves no USB devices');
    return deps.usb;
  };
  const vm = deps.vm.name;
  return {
    methods: {
      [UsbList.name]: async () => ({ devices: await usb().list(vm) }),
      [UsbAcquire.name]: async (params, ctx) => usb().acquire(vm, (params as Params<typeof UsbAcquire>).id, 'guest', ctx.signal),
      [UsbRelease.name]: async (params) => ({ released: await usb().release(vm, (params as Params<typeof UsbRelease>).id, 'guest') }),
    },
  };
}
