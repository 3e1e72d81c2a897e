import { describe, expect, it } from 'vitest';
import { captureLogger } from '../../test/helpers/log-capture.js';
import { ProtocolError } from '../protocol/messages.js';
import type { VmmAdapter, VmmEvent } from '../vmm/adapter.js';
import { VmDevices } from './vm-devices.js';

/** An adapter that is only what the device layer sees: a kind, its capabilities, events. */
function adapter(kind: VmmAdapter['kind'], caps: Partial<VmmAdapter> = {}) {
  const listeners = new Set<(e: VmmEvent) => void>();
  const a: VmmAdapter = {
    kind,
    events: { subscribe: (l) => (listeners.add(l), () => listeners.delete(l)), iterate: () => { throw new Error('unused'); } },
    close: async () => undefined,
    ...caps,
  };
  return { a, emit: (e: VmmEvent) => listeners.forEach((l) => l(e)) };
}

const shares = { attachShare: async () => ({ id: 'x', tag: 't', deviceId: 'd', location: undefined }), detachShare: async () => undefined, listShares: async () => [] };

describe('the device layer', () => {
  it('gives a portal the capability it needs, or the guest an error naming the VMM', async () => {
    const { a } = adapter('cloud-hypervisor', { shares });
    const devices = new VmDevices(async () => a, captureLogger().log);
    expect(() => devices.require('shares')).toThrow(/cannot reach this VM's VMM \(VMM not connected yet\)/);
    await devices.start();
    expect(devices.require('shares')).toBe(shares);
    const err = (() => {
      try {
        devices.require('usb');
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as Error).message).toBe("this VM's VMM, cloud-hypervisor, cannot attach USB devices through xdp-vm");
    expect(devices.capabilities()).toEqual({ has: ['shares'], lacks: { usb: expect.stringContaining('USB'), net: expect.stringContaining('network') } });
    await devices.close();
  });

  it('passes on every detach, and on the VMM going away reconnects by itself', async () => {
    const first = adapter('qemu', { shares });
    const second = adapter('qemu', { shares });
    const queue = [first.a, second.a];
    const devices = new VmDevices(async () => queue.shift()!, captureLogger().log);
    const seen: string[] = [];
    devices.on('device-detached', (e: VmmEvent) => seen.push(`${e.type}`));
    devices.on('gone', (r: string) => seen.push(`gone: ${r}`));
    devices.on('up', () => seen.push('up'));
    await devices.start();
    first.emit({ type: 'device-detached', kind: 'share', id: 'x', deviceId: 'd', expected: false });
    first.emit({ type: 'vmm-gone', reason: 'QEMU exited' });
    expect(devices.vmm).toBeUndefined();
    expect(devices.detail).toBe('VMM not reachable: QEMU exited');
    await expect.poll(() => devices.vmm, { timeout: 3000 }).toBe(second.a);
    expect(seen).toEqual(['up', 'device-detached', 'gone: QEMU exited', 'up']);
    await devices.close();
  });

  it('keeps trying a VMM that is not there yet, and says why meanwhile', async () => {
    let tries = 0;
    const { a } = adapter('libvirt', { shares });
    const devices = new VmDevices(async () => {
      if (++tries < 2) throw new Error('connect ENOENT /run/qmp.sock');
      return a;
    }, captureLogger().log);
    await devices.start();
    expect(devices.detail).toBe('VMM not reachable: connect ENOENT /run/qmp.sock');
    await expect.poll(() => devices.vmm, { timeout: 3000 }).toBe(a);
    await devices.close();
  });
});
