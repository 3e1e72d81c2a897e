import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { macFor } from '../portals/network/mac.js';
import { Bus } from '../src/dbus/bus.js';
import { CONTROL_BUS_NAME, CONTROL_INTERFACE, CONTROL_PATH } from '../src/host/control.js';
import { sessionUser } from '../src/testbed/as-user.js';
import { bootPortalVm, type PortalVm } from '../src/testbed/qemu/portal-vm.js';
import { startSystemHelper } from '../src/testbed/system-helper.js';
import { World } from '../src/testbed/world.js';
import { dhcp, nicWithMac } from '../src/testbed/qemu/guest-net.js';
import { summarize, type Summary } from './stats.js';

/**
 * Network figures with two QEMU guests (TCG here) and the real privileged
 * helper in a network namespace of its own, as test/e2e/network-bridges does:
 *  - join latency: the host's AttachNetwork (the answer, where a guest's join
 *    would have had its consent) → the NIC present in the guest, next to the
 *    guest agent's own round trip (what the guest-side wait adds);
 *  - VM↔VM ping round trip over hot-plugged NICs on a vm-only bridge, next to
 *    the same two VMs over NICs they booted with (a QEMU stream link between
 *    the two QEMUs, no bridge, no tap).
 */
export interface NetworkBench {
  joinToNic: Summary;
  agentRoundTrip: Summary;
  pingHotplugged: Summary;
  pingBootNic: Summary;
}

const BOOT = { work: { mac: '02:00:00:80:00:01', address: '10.80.0.1' }, shop: { mac: '02:00:00:80:00:02', address: '10.80.0.2' } };

/** Per-packet round trips from busybox ping's "time=X ms" lines. */
async function pingTimes(g: PortalVm, address: string, count: number): Promise<number[]> {
  const out = await g.sh(`busybox ping -c ${count} -i 0.1 ${address}`, 120_000);
  const times = [...out.matchAll(/time=([0-9.]+) ms/g)].map((m) => Number(m[1]));
  if (times.length < count * 0.9) throw new Error(`ping ${address}: only ${times.length} of ${count} answered\n${out}`);
  return times;
}

/** Wait in the guest for an interface with `mac`, polling every 10 ms. */
const waitForNic = (g: PortalVm, mac: string) => g.sh(`while :; do for i in /sys/class/net/*; do [ "$(cat $i/address)" = "${mac}" ] && exit 0; done; sleep 0.01; done`, 60_000);

export async function benchNetwork(opts: { joins: number; pings: number }): Promise<NetworkBench> {
  const user = sessionUser();
  const helper = await startSystemHelper({ allowList: `vm-only ${user.name} xdpvm-bench 10.79.0.1/24` });
  const scratch = mkdtempSync(path.join(tmpdir(), 'xdp-vm-bench-net-'));
  let world: World | undefined;
  const vms: PortalVm[] = [];
  try {
    world = await World.start(
      [
        { name: 'work', qemu: true },
        { name: 'shop', qemu: true },
      ],
      { config: { networks: { lab: { type: 'vm-only', bridge: 'xdpvm-bench' } } }, daemonEnv: { DBUS_SYSTEM_BUS_ADDRESS: helper.address } },
    );
    // The boot NICs: one QEMU listens on a stream socket, the other connects (so work boots first).
    const link = path.join(scratch, 'boot-link.sock');
    const bootNic = (name: 'work' | 'shop') => [
      '-netdev', `stream,id=boot0,server=${name === 'work' ? 'on' : 'off'},addr.type=unix,addr.path=${link}`,
      '-device', `virtio-net-pci,netdev=boot0,mac=${BOOT[name].mac}`,
    ];
    const work = await bootPortalVm(world, 'work', { rootPorts: 3, extraQemuArgs: bootNic('work') });
    vms.push(work);
    const shop = await bootPortalVm(world, 'shop', { rootPorts: 3, extraQemuArgs: bootNic('shop') });
    vms.push(shop);
    for (const [name, g] of [['work', work], ['shop', shop]] as const) {
      const nic = await nicWithMac(g, BOOT[name].mac);
      await g.sh(`ip link set ${nic} up && ip addr add ${BOOT[name].address}/24 dev ${nic}`);
    }
    const bus = await Bus.connect(world.hostBus.address);
    const control = (member: string, vm: string) => bus.call({ destination: CONTROL_BUS_NAME, path: CONTROL_PATH, interface: CONTROL_INTERFACE, member, signature: 'ss', body: [vm, 'lab'], timeoutMs: 60_000 });
    try {
      const mac = macFor('work', 'lab');
      const joins: number[] = [];
      const agent: number[] = [];
      for (let i = -1; i < opts.joins; i++) {
        const seen = waitForNic(work, mac);
        // Let the guest's wait start before the clock does.
        await new Promise((r) => setTimeout(r, 200));
        const t0 = performance.now();
        await control('AttachNetwork', 'work');
        await seen;
        const joined = performance.now() - t0;
        const t1 = performance.now();
        await waitForNic(work, mac);
        const round = performance.now() - t1;
        // The first is a warm-up.
        if (i >= 0) joins.push(joined), agent.push(round);
        await control('DetachNetwork', 'work');
        for (let n = 0; (await nicWithMac(work, mac)) !== ''; n++) if (n > 200) throw new Error('the NIC did not leave the guest');
      }
      await control('AttachNetwork', 'work');
      await control('AttachNetwork', 'shop');
      await Promise.all([waitForNic(work, mac), waitForNic(shop, macFor('shop', 'lab'))]);
      const shopLease = await dhcp(shop, await nicWithMac(shop, macFor('shop', 'lab')));
      await dhcp(work, await nicWithMac(work, mac));
      // Warm both paths (ARP), then interleave the two in blocks.
      await pingTimes(work, shopLease.address, 5);
      await pingTimes(work, BOOT.shop.address, 5);
      const hot: number[] = [];
      const boot: number[] = [];
      for (let done = 0; done < opts.pings; done += 50) {
        hot.push(...(await pingTimes(work, shopLease.address, 50)));
        boot.push(...(await pingTimes(work, BOOT.shop.address, 50)));
      }
      return { joinToNic: summarize(joins), agentRoundTrip: summarize(agent), pingHotplugged: summarize(hot), pingBootNic: summarize(boot) };
    } finally {
      bus.close();
    }
  } finally {
    for (const g of vms) await g.guest.cleanup().catch(() => undefined);
    await world?.stop();
    await helper.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
}
