import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuAdapter } from '../../src/vmm/qemu.js';
import { freePort, readFrom, serveLine } from '../../src/testbed/loopback.js';
import { agentShell, dhcp, guestReads, guestServes, nicWithMac } from '../../src/testbed/qemu/guest-net.js';
import { bootGuest, type Guest } from '../../src/testbed/qemu/vm.js';

/**
 * QEMU's own user networking (slirp), which a `user` network gets when passt
 * is not installed: the QEMU adapter's `user` backend (netdev_add with
 * hostfwd) against a real TCG guest. The guest takes slirp's DHCP lease,
 * reaches a TCP server on the host's loopback through slirp's gateway, and
 * a forward from the host's 127.0.0.1 reaches a listener in the guest; then
 * the NIC is unplugged and the forward closes. Traffic stays on loopback.
 * libvirt's own (`<interface type='user'>`) is proven in libvirt.test.ts.
 */
const SLOW = 240_000;
const MAC = '02:5a:51:00:00:01';
const GUEST_PORT = 7022;
let guest: Guest;

beforeAll(async () => {
  guest = await bootGuest({ name: 'usernet', rootPorts: 2, modules: ['core'] });
}, SLOW);
afterAll(async () => {
  await guest?.cleanup();
});

describe("QEMU's own user networking", () => {
  it('a NIC on slirp: a lease, the host loopback through the gateway, a forward into the guest, and gone on detach', async () => {
    const adapter = new QemuAdapter(guest.qmp, { name: guest.name });
    const server = await serveLine('hello from the host loopback');
    const hostPort = await freePort();
    const g = agentShell(guest.agent);
    try {
      const attached = await adapter.attachNet({ id: 'web', backend: { type: 'user', forwards: [{ host: hostPort, guest: GUEST_PORT }] }, mac: MAC });
      expect(attached).toMatchObject({ kind: 'net', id: 'web', deviceId: 'xdpvm-net-web' });
      let nic = '';
      await expect.poll(async () => (nic = await nicWithMac(g, MAC)), { timeout: 30_000, interval: 200 }).toMatch(/^eth\d+$/);
      // slirp's built-in DHCP server: the first lease of its default 10.0.2.0/24, its gateway and DNS.
      expect(await dhcp(g, nic)).toEqual({ address: '10.0.2.15', router: '10.0.2.2', dns: '10.0.2.3' });
      // slirp's gateway is the host's loopback.
      expect(await guestReads(g, '10.0.2.2', server.port)).toBe('hello from the host loopback\n');

      await guestServes(g, GUEST_PORT, 'hello from inside the guest');
      await expect.poll(() => readFrom(hostPort, 5000, 'hello\n').catch((e: Error) => e.message), { timeout: 30_000, interval: 1000 }).toBe('hello from inside the guest\n');

      await adapter.detachNet('web');
      expect(await nicWithMac(g, MAC)).toBe('');
      expect(await adapter.listNet()).toEqual([]);
      await expect(readFrom(hostPort, 5000)).rejects.toThrow(/ECONNREFUSED/);
    } finally {
      server.close();
      await adapter.close();
    }
  }, SLOW);
});
