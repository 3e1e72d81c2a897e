import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { macFor } from '../../portals/network/mac.js';
import { requireProgram } from '../../src/deps.js';
import { parseAuditLines } from '../../src/host/audit.js';
import { cliEntry } from '../../src/paths.js';
import { bootPortalVm, type PortalVm } from '../../src/testbed/qemu/portal-vm.js';
import { sessionUser } from '../../src/testbed/as-user.js';
import { startSystemHelper, type SystemHelper } from '../../src/testbed/system-helper.js';
import { World } from '../../src/testbed/world.js';
import { dhcp, guestServes, nicWithMac, pings, type Lease } from '../../src/testbed/qemu/guest-net.js';

/**
 * Bridge and vm-only networks end to end, with real QEMU guests and the
 * real privileged helper. The helper runs as root on a bus configured like
 * the system bus, in a network namespace this test makes: that namespace is
 * "the host's network" here, so every bridge, tap and DHCP server is in it
 * and no traffic leaves it. The daemon and the VMs' QEMUs run outside it, the
 * daemon as the test user; each tap reaches QEMU as a descriptor (the helper's
 * tap-open, then QMP getfd), which works across namespaces.
 *
 * - `lab` (vm-only): the helper makes its bridge with the admin's address
 *   (10.77.0.1/24, from the allow list) and a DHCP server on first use.
 * - `lan` (bridge br0): br0 exists already, with a LAN's router address and
 *   a dnsmasq of the test's own standing in for the LAN's DHCP server.
 */
const LAB = { host: '10.77.0.1', prefix: '10.77.0.' };
const LAN = { router: '192.168.99.1', prefix: '192.168.99.' };
const GUEST_PORT = 7000;
const FROM_GUEST = 'hello from the guest on lab';
const NODE = process.execPath;
const CLI = cliEntry();
const skip = process.getuid?.() !== 0 ? 'needs root: the privileged helper makes taps, and the test makes the network namespace they live in' : undefined;

let helper: SystemHelper;
let world: World;
const vms = new Map<string, PortalVm>();
const leases = new Map<string, Lease>();

const guestNet = (g: PortalVm, args: string) => g.sh(`${NODE} ${CLI} net ${args}`, 150_000);
const audit = () => parseAuditLines(readFileSync(world.auditFile, 'utf8').split('\n')).filter((l) => l.portal === 'Network');
const vmsOn = async (network: string) => ((JSON.parse((await world.cli(['net', 'list', '--json'])).stdout) as { name: string; vms: string[] }[]).find((n) => n.name === network)?.vms ?? []).sort();
/** The taps on `bridge` in the helper's namespace, with their owners. */
async function tapsOn(bridge: string): Promise<{ tap: string; owner: string }[]> {
  const links = JSON.parse(await helper.inNs(requireProgram('ip'), ['-j', 'link', 'show', 'master', bridge])) as { ifname: string }[];
  return Promise.all(links.map(async (l) => ({ tap: l.ifname, owner: (await helper.inNs('/bin/cat', [`/sys/class/net/${l.ifname}/owner`], { mount: true })).trim() })));
}

async function boot(name: string): Promise<PortalVm> {
  const g = await bootPortalVm(world, name, { rootPorts: 4 });
  // As network.test.ts: the backend starts by D-Bus activation, which TCG can outlast; ask again.
  await g.sh(
    'for i in 1 2 3 4 5; do dbus-send --session --print-reply --reply-timeout=60000 --dest=org.freedesktop.impl.portal.desktop.vm /org/freedesktop/portal/desktop org.freedesktop.DBus.Peer.Ping >/dev/null && exit 0; sleep 2; done; exit 1',
    330_000,
  );
  await expect
    .poll(async () => (JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { name: string; connected: boolean }[] }).vms.find((v) => v.name === name)?.connected, { timeout: 60_000, interval: 500 })
    .toBe(true);
  vms.set(name, g);
  return g;
}

beforeAll(async () => {
  if (skip) return;
  const user = sessionUser();
  helper = await startSystemHelper({ allowList: ['# the e2e allow list', `vm-only ${user.name} xdpvm-lab ${LAB.host}/24`, `bridge ${user.name} br0`].join('\n') });
  const ip = requireProgram('ip');
  for (const args of [['link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0'], ['addr', 'add', `${LAN.router}/24`, 'dev', 'br0'], ['link', 'set', 'br0', 'up']]) await helper.inNs(ip, args);
  // The LAN's DHCP server, with a router; its pid file beside the helper's, so the helper's stop ends it too.
  await helper.inNs(requireProgram('dnsmasq'), [
    '--conf-file=/dev/null',
    '--interface=br0',
    '--bind-interfaces',
    '--except-interface=lo',
    '--port=0',
    `--dhcp-range=${LAN.prefix}50,${LAN.prefix}99,255.255.255.0,1h`,
    `--dhcp-option=option:router,${LAN.router}`,
    `--dhcp-leasefile=${path.join(helper.stateDir, 'lan.leases')}`,
    `--pid-file=${path.join(helper.stateDir, 'lan-dnsmasq.pid')}`,
  ]);
  world = await World.start(
    [
      { name: 'work', label: 'Work', qemu: true },
      { name: 'shop', label: 'Shop', qemu: true },
    ],
    {
      config: { networks: { lab: { type: 'vm-only', description: 'the lab: my VMs and this computer' }, lan: { type: 'bridge', bridge: 'br0' } } },
      daemonEnv: { DBUS_SYSTEM_BUS_ADDRESS: helper.address },
    },
  );
}, 180_000);

afterAll(async () => {
  for (const g of vms.values()) await g.guest.cleanup();
  await world?.stop();
  await helper?.stop();
});

describe.skipIf(skip)('bridge and vm-only networks in real guests, through the privileged helper', () => {
  it('two VMs join a vm-only network: each gets an address from its DHCP server, they ping each other and the host side, and the host reaches a guest\'s TCP port', async () => {
    const [work, shop] = await Promise.all([boot('work'), boot('shop')]);
    // work asks from inside, allowed by a row; shop is attached by the user on the host.
    await world.cli(['permissions', 'set', 'work', 'Network', 'allow', 'lab']);
    const joined = await guestNet(work, 'join lab');
    expect(joined).toMatch(new RegExp(`Joined 'lab': interface \\S+ with MAC ${macFor('work', 'lab')}`));
    expect((await world.cli(['net', 'attach', 'shop', 'lab'])).stdout).toContain(`MAC ${macFor('shop', 'lab')}`);
    for (const [name, g] of [['work', work], ['shop', shop]] as const) {
      const nic = await nicWithMac(g, macFor(name, 'lab'));
      expect(nic).not.toBe('');
      const lease = await dhcp(g, nic);
      // An address on the admin's subnet, and no way out: no router, no DNS server.
      expect(lease.address.startsWith(LAB.prefix)).toBe(true);
      expect(lease.address).not.toBe(LAB.host);
      expect(lease).toMatchObject({ router: '', dns: '' });
      leases.set(name, lease);
    }
    expect(leases.get('work')!.address).not.toBe(leases.get('shop')!.address);
    await expect.poll(() => pings(work, leases.get('shop')!.address), { timeout: 30_000, interval: 1000 }).toBe(true);
    expect(await pings(shop, leases.get('work')!.address)).toBe(true);
    expect(await pings(work, LAB.host)).toBe(true);
    // ssh-like: the host connects to a guest's port and the guest's server answers.
    await guestServes(shop, GUEST_PORT, FROM_GUEST);
    const connect = `const s = require("net").connect(${GUEST_PORT}, "${leases.get('shop')!.address}"); let got = ""; s.on("data", (d) => (got += d)); s.on("end", () => process.stdout.write(got)); s.on("error", (e) => { process.stdout.write(e.code); });`;
    await expect.poll(async () => (await helper.inNs(NODE, ['-e', connect], { timeoutMs: 15_000 })).trim(), { timeout: 60_000, interval: 1000 }).toBe(FROM_GUEST);
    // The bridge and its taps: one per VM, each owned by the user the daemon runs as; the daemon is not root.
    const taps = await tapsOn('xdpvm-lab');
    expect(taps).toHaveLength(2);
    for (const t of taps) expect(t.owner).toBe(String(world.user!.uid));
    expect(readFileSync(`/proc/${world.daemon!.pid}/status`, 'utf8')).toMatch(new RegExp(`^Uid:\\s+${world.user!.uid}\\s`, 'm'));
    expect(await vmsOn('lab')).toEqual(['shop', 'work']);
    const lines = audit().filter((l) => l.decision === 'allow');
    expect(lines).toContainEqual(expect.objectContaining({ vm: 'work', reason: 'policy', asked: expect.objectContaining({ network: 'lab', type: 'vm-only', via: 'guest', attached: true, bridge: 'xdpvm-lab', hostAddress: `${LAB.host}/24` }) }));
    expect(lines).toContainEqual(expect.objectContaining({ vm: 'shop', reason: 'cli', asked: expect.objectContaining({ network: 'lab', via: 'cli', attached: true, tap: expect.stringMatching(/^xdpvm\d+$/) }) }));
  });

  it('a denied VM gets a clear error and no NIC, and no tap is made for it', async () => {
    const shop = vms.get('shop')!;
    await world.cli(['permissions', 'set', 'shop', 'Network', 'deny', 'lan']);
    const before = (await shop.sh('ls /sys/class/net')).trim();
    const denied = await guestNet(shop, 'join lan').then(() => '', (e: Error) => e.message);
    expect(denied).toMatch(/a policy row refuses this VM the network 'lan'/);
    expect((await shop.sh('ls /sys/class/net')).trim()).toBe(before);
    expect(await tapsOn('br0')).toEqual([]);
    expect(audit()).toContainEqual(expect.objectContaining({ vm: 'shop', decision: 'deny', reason: 'policy', rule: 'Network lan shop deny' }));
  });

  it('a bridge network: the LAN\'s own DHCP server gives the address and its router, and the router answers', async () => {
    const work = vms.get('work')!;
    await world.cli(['permissions', 'set', 'work', 'Network', 'allow', 'lan']);
    expect(await guestNet(work, 'join lan')).toMatch(/Joined 'lan'/);
    const lease = await dhcp(work, await nicWithMac(work, macFor('work', 'lan')));
    expect(lease.address.startsWith(LAN.prefix)).toBe(true);
    expect(lease.router).toBe(LAN.router);
    expect(await pings(work, LAN.router)).toBe(true);
    expect((await tapsOn('br0')).map((t) => t.owner)).toEqual([String(world.user!.uid)]);
  });

  it('leave unplugs the NIC, deletes its tap, and ping across it fails', async () => {
    const [work, shop] = [vms.get('work')!, vms.get('shop')!];
    expect(await guestNet(work, 'leave lab')).toMatch(/Left 'lab'/);
    await expect.poll(() => nicWithMac(work, macFor('work', 'lab')), { timeout: 30_000, interval: 500 }).toBe('');
    await expect.poll(async () => (await tapsOn('xdpvm-lab')).length, { timeout: 10_000, interval: 300 }).toBe(1);
    expect(await pings(shop, leases.get('work')!.address)).toBe(false);
    expect(await vmsOn('lab')).toEqual(['shop']);
    expect(audit().filter((l) => l.vm === 'work' && l.decision === 'revoke').at(-1)).toMatchObject({ asked: { network: 'lab', via: 'guest', detached: true, tapRemoved: true } });
  });

  it('the "Always" rows attach both networks again after a reboot, with nobody asking, and the stable MAC gets the same lease', async () => {
    const old = vms.get('work')!;
    await old.shutdown();
    await old.guest.cleanup();
    vms.delete('work');
    // The VM's taps go with it.
    await expect.poll(async () => (await tapsOn('br0')).length, { timeout: 20_000, interval: 500 }).toBe(0);
    const work = await boot('work');
    await expect.poll(async () => [await nicWithMac(work, macFor('work', 'lab')), await nicWithMac(work, macFor('work', 'lan'))].every(Boolean), { timeout: 60_000, interval: 500 }).toBe(true);
    expect(await vmsOn('lab')).toEqual(['shop', 'work']);
    expect(await vmsOn('lan')).toEqual(['work']);
    const lease = await dhcp(work, await nicWithMac(work, macFor('work', 'lab')));
    expect(lease.address).toBe(leases.get('work')!.address);
    await expect.poll(() => pings(work, leases.get('shop')!.address), { timeout: 30_000, interval: 1000 }).toBe(true);
    expect(audit()).toContainEqual(expect.objectContaining({ vm: 'work', decision: 'allow', reason: 'policy', rule: 'Network lab work allow', asked: expect.objectContaining({ via: 'always', attached: true }) }));
  });
});
