import type { Logger } from '../log.js';
import { assertSafeId, VmmError, type NetSpec, type ShareSpec, type UsbSpec, type VmmEvent, type VmmEvents } from './adapter.js';
import { SubscriptionQueue } from './subscription-queue.js';

/**
 * What every VMM adapter shares: the event stream, the one-operation-at-a-time
 * lock (hot-plug steps must not interleave), the end of the VMM, and the
 * checks of a share's id and tag before anything is sent.
 */
export const MAX_TAG_BYTES = 36;

export function checkShareSpec(spec: ShareSpec): void {
  assertSafeId('share', spec.id);
  if (spec.tag === '' || Buffer.byteLength(spec.tag) > MAX_TAG_BYTES) {
    throw new VmmError(`virtiofs tag ${JSON.stringify(spec.tag)} must be 1 to ${MAX_TAG_BYTES} bytes`);
  }
}

/** Unicast (group bit clear: set, every frame to it is a multicast) and locally administered (bit 1 of the first octet set), lowercase. */
const MAC = /^[0-9a-f][26ae](:[0-9a-f]{2}){5}$/;

/** A NIC's id and MAC, checked before anything reaches a VMM. */
export function checkNetSpec(spec: NetSpec): void {
  assertSafeId('NIC', spec.id);
  if (spec.mac !== undefined && !MAC.test(spec.mac)) throw new VmmError(`NIC ${spec.id}: MAC ${JSON.stringify(spec.mac)} must be a unicast, locally administered address like 02:12:34:56:78:9a (lowercase)`);
  if (spec.backend.type === 'user') {
    const ports = spec.backend.forwards;
    if (ports.length > MAX_FORWARDS) throw new VmmError(`NIC ${spec.id}: at most ${MAX_FORWARDS} port forwards, not ${ports.length}`);
    for (const f of ports) {
      if (![f.host, f.guest].every((p) => Number.isInteger(p) && p >= 1 && p <= 65535)) throw new VmmError(`NIC ${spec.id}: port forward ${JSON.stringify(f)} must map a TCP port 1-65535 to another`);
    }
  }
}

/** As the config allows per network. */
const MAX_FORWARDS = 32;

/**
 * A USB passthrough's id and where the device is, checked before anything
 * reaches a VMM: numbers a VMM would take (QEMU's are uint32) but that name
 * no device, or that a VMM reads as "any" (0), never leave the daemon.
 */
export function checkUsbSpec(spec: UsbSpec): void {
  assertSafeId('USB device', spec.id);
  const within = (n: number, lo: number, hi: number) => Number.isInteger(n) && n >= lo && n <= hi;
  const fail = (what: string) => new VmmError(`USB device ${spec.id}: ${what}`);
  // usbfs names them /dev/bus/usb/BBB/DDD; USB addresses are 7 bits and 0 is the default address.
  if (!within(spec.hostBus, 1, 255)) throw fail(`bus ${spec.hostBus} must be a bus number 1-255 (busnum in sysfs)`);
  if (!within(spec.hostAddress, 1, 127)) throw fail(`address ${spec.hostAddress} must be a device address 1-127 (devnum in sysfs)`);
  if (!within(spec.vendorId, 0, 0xffff) || !within(spec.productId, 0, 0xffff)) throw fail(`vendor ${spec.vendorId} and product ${spec.productId} must be 16-bit ids`);
  if (spec.fd !== undefined && !within(spec.fd, 0, 0x7fffffff)) throw fail(`descriptor ${spec.fd} must be an open file descriptor's number`);
}

export abstract class AdapterBase {
  readonly events: VmmEvents;
  private readonly listeners = new Set<(event: VmmEvent) => void>();
  private lock: Promise<unknown> = Promise.resolve();
  protected gone = false;
  protected abstract readonly log: Logger;

  constructor() {
    this.events = {
      subscribe: (listener) => {
        this.listeners.add(listener);
        return () => this.listeners.delete(listener);
      },
      iterate: (iterOpts = {}) =>
        new SubscriptionQueue<VmmEvent>((push, end) => {
          const off = this.events.subscribe((e) => {
            push(e);
            if (e.type === 'vmm-gone') end();
          });
          if (this.gone) end();
          return off;
        }, iterOpts),
    };
  }

  /** The VMM is gone: stop watching it (the hook) and tell listeners, once. */
  protected markGone(reason: string): void {
    if (this.gone) return;
    this.gone = true;
    this.whenGone(reason);
    this.emit({ type: 'vmm-gone', reason });
  }

  /** Release what watches the VMM; called once, before listeners hear of it. */
  protected whenGone(_reason: string): void {}

  protected emit(event: VmmEvent): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (err) {
        this.log.error({ err, event: event.type }, 'VMM event listener threw');
      }
    }
  }

  /** The adapter is closing: nobody hears from it any more. */
  protected dropListeners(): void {
    this.listeners.clear();
  }

  protected serialized<T>(op: () => Promise<T>): Promise<T> {
    const run = this.lock.then(op, op);
    this.lock = run.catch(() => undefined);
    return run;
  }
}
