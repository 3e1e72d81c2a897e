import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runProgram, type Service } from '../../src/exec.js';
import { requireProgram } from '../../src/deps.js';
import { VmmError, type UsbSpec, type VmmEvent } from '../../src/vmm/adapter.js';
import { LibvirtAdapter } from '../../src/vmm/libvirt.js';
import { QEMU_GUEST_MOUNT, World } from '../../src/testbed/world.js';
import { sessionUser } from '../../src/testbed/as-user.js';
import { serveLine } from '../../src/testbed/loopback.js';
import { agentShell, dhcp, guestReads, nicWithMac } from '../../src/testbed/qemu/guest-net.js';
import { startVirtiofsd } from '../../src/testbed/qemu/virtiofsd.js';
import { bootLibvirtGuest, startPrivateLibvirtd, type LibvirtGuest, type PrivateLibvirtd } from '../../src/testbed/qemu/libvirt-guest.js';
import { GUEST_APP, GUEST_ENV, guestSetupScript, PORTAL_PORT, type AppResult } from '../../src/testbed/qemu/portal-vm.js';

/**
 * The libvirt adapter against a real libvirtd (9.0 in Debian 12), private to
 * this file, and a real guest it runs (TCG here): shares hot-plugged with
 * `virsh attach-device --live`, read in the guest, unplugged after the guest
 * unmounts; a guest that ejects a share itself; a NIC on a tap; a host USB
 * device refused, by us and by libvirt; a domain that stops; and the
 * host daemon doing the same for an app's first grant with `vmm.type: libvirt`.
 */
let lv: PrivateLibvirtd;
let scratch: string;
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  const t0 = Date.now();
  lv = await startPrivateLibvirtd({ client: sessionUser() });
  console.log(`libvirt: private libvirtd answering after ${Date.now() - t0} ms`);
  scratch = mkdtempSync(path.join(tmpdir(), 'xdpvm-libvirt-e2e-'));
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await lv?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

function events(adapter: LibvirtAdapter): VmmEvent[] {
  const seen: VmmEvent[] = [];
  adapter.events.subscribe((e) => seen.push(e));
  return seen;
}

/** A directory with one file, served by a virtiofsd of its own. */
async function exportDir(name: string, content: string): Promise<{ socketPath: string; virtiofsd: Service }> {
  const dir = path.join(scratch, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'hello.txt'), content);
  const socketPath = path.join(scratch, `${name}.sock`);
  rmSync(socketPath, { force: true });
  const virtiofsd = await startVirtiofsd({ name: `virtiofsd-${name}`, socketPath, sourceDir: dir });
  cleanups.push(() => virtiofsd.stop(1000));
  return { socketPath, virtiofsd };
}

/** The guest retries the mount: the device may still be probing when attach returns. */
const mountAndRead = (tag: string, at: string) =>
  `mkdir -p ${at}; for i in $(seq 100); do mount -t virtiofs ${tag} ${at} 2>/dev/null && break; sleep 0.05; done; cat ${at}/hello.txt`;

describe('libvirt adapter with a real libvirtd', () => {
  let guest: LibvirtGuest;
  let adapter: LibvirtAdapter;

  beforeAll(async () => {
    guest = await bootLibvirtGuest(lv, { name: 'lv', rootPorts: 2 });
    cleanups.push(() => guest.cleanup());
    console.log(`libvirt: virsh create → guest agent ready in ${guest.bootMs} ms`);
    adapter = await LibvirtAdapter.connect({ domain: guest.domain, uri: lv.uri, name: 'lv', pollMs: 1000 });
    cleanups.push(() => adapter.close());
  });

  it('a share hot-plugged through libvirt is mounted and read in the guest, and unplugged after the guest unmounts', async () => {
    const seen = events(adapter);
    for (const round of [1, 2]) {
      const { socketPath, virtiofsd } = await exportDir(`share-${round}`, `hello from libvirt, round ${round}`);
      const t0 = Date.now();
      const attached = await adapter.attachShare({ id: 'doc', tag: 'xdpvm-e2e', socketPath });
      expect(attached).toEqual({ id: 'doc', tag: 'xdpvm-e2e', deviceId: 'ua-xdpvm-fs-doc', location: expect.stringMatching(/^pci\.\d+$/) });
      expect(await guest.agent.check(mountAndRead('xdpvm-e2e', '/run/share'))).toBe(`hello from libvirt, round ${round}`);
      const readMs = Date.now() - t0;

      expect(await adapter.listShares()).toEqual([
        { id: undefined, tag: 'hostroot', deviceId: 'fs0', location: expect.stringMatching(/^pci\.\d+$/), attachedHere: false },
        { id: 'doc', tag: 'xdpvm-e2e', deviceId: 'ua-xdpvm-fs-doc', location: attached.location, attachedHere: true },
      ]);

      let pluggedWhileUnmounting: boolean | undefined;
      const t1 = Date.now();
      await adapter.detachShare('doc', {
        beforeDetach: async () => {
          await guest.agent.check('umount /run/share');
          pluggedWhileUnmounting = (await lv.virsh(['dumpxml', '--domain', guest.domain])).includes('ua-xdpvm-fs-doc');
        },
      });
      const unplugMs = Date.now() - t1;
      expect(pluggedWhileUnmounting).toBe(true);
      expect(await lv.virsh(['dumpxml', '--domain', guest.domain])).not.toContain('ua-xdpvm-fs-doc');
      // Only the root share is left bound in the guest.
      expect(await guest.agent.check('ls /sys/bus/virtio/drivers/virtiofs | grep -c virtio')).toBe('1\n');
      // The C virtiofsd serves one connection and exits once QEMU lets go of it.
      await expect.poll(() => virtiofsd.running, { timeout: 10_000 }).toBe(false);
      console.log(`libvirt round ${round}: attach → guest read ${readMs} ms, detach (incl. guest umount) ${unplugMs} ms`);
    }
    expect(seen).toEqual([
      { type: 'device-detached', kind: 'share', id: 'doc', deviceId: 'ua-xdpvm-fs-doc', expected: true },
      { type: 'device-detached', kind: 'share', id: 'doc', deviceId: 'ua-xdpvm-fs-doc', expected: true },
    ]);
  });

  it('a share the guest ejects by itself is reported as an unexpected detach', async () => {
    const { socketPath } = await exportDir('ejected', 'soon gone');
    const virtiofsDevices = 'ls /sys/bus/virtio/drivers/virtiofs | grep virtio';
    const before = (await guest.agent.check(virtiofsDevices)).split('\n').filter(Boolean);
    await adapter.attachShare({ id: 'eject-me', tag: 'xdpvm-eject', socketPath });
    expect(await guest.agent.check(mountAndRead('xdpvm-eject', '/run/eject') + ' && umount /run/eject')).toBe('soon gone');
    const detached = new Promise<VmmEvent>((resolve) => adapter.events.subscribe((e) => e.type === 'device-detached' && resolve(e)));
    // ACPI eject from inside: power off the hot-plug slot the share's PCI device sits in.
    const ours = (await guest.agent.check(virtiofsDevices)).split('\n').filter((d) => d && !before.includes(d));
    expect(ours).toHaveLength(1);
    const ejected = await guest.agent.check(
      [
        `pci=$(basename "$(readlink -f /sys/bus/virtio/drivers/virtiofs/${ours[0]}/..)")`,
        'for s in /sys/bus/pci/slots/*; do',
        '  if [ "$(cat "$s/address")" = "${pci%.*}" ]; then echo 0 > "$s/power" && echo "ejected $pci"; fi',
        'done',
      ].join('\n'),
    );
    expect(ejected).toMatch(/^ejected 0000:\w+:00\.0\n$/);
    expect(await detached).toEqual({ type: 'device-detached', kind: 'share', id: 'eject-me', deviceId: 'ua-xdpvm-fs-eject-me', expected: false });
    expect((await adapter.listShares()).map((s) => s.tag)).toEqual(['hostroot']);
  });

  it("a NIC on libvirt's own user networking: hot-plugged, a lease from QEMU's slirp, the host's loopback through its gateway, and unplugged", async () => {
    const mac = '02:5a:4c:56:00:02';
    const server = await serveLine('hello from the host loopback');
    const g = agentShell(guest.agent);
    try {
      const attached = await adapter.attachNet({ id: 'web', backend: { type: 'user', forwards: [] }, mac });
      expect(attached).toEqual({ kind: 'net', id: 'web', deviceId: 'ua-xdpvm-net-web', location: expect.stringMatching(/^pci\.\d+$/) });
      expect(await lv.virsh(['dumpxml', '--domain', guest.domain])).toMatch(/<interface type='user'>\s*<mac address='02:5a:4c:56:00:02'\/>/);
      let nic = '';
      await expect.poll(async () => (nic = await nicWithMac(g, mac)), { timeout: 30_000, interval: 200 }).toMatch(/^eth\d+$/);
      expect(await dhcp(g, nic)).toEqual({ address: '10.0.2.15', router: '10.0.2.2', dns: '10.0.2.3' });
      // This libvirtd's QEMU runs in the host's network namespace: slirp's gateway is the host's loopback.
      expect(await guestReads(g, '10.0.2.2', server.port)).toBe('hello from the host loopback\n');
      await adapter.detachNet('web');
      expect(await nicWithMac(g, mac)).toBe('');
      expect(await adapter.listNet()).toEqual([]);
    } finally {
      server.close();
    }
  });

  it('a NIC on an existing tap is hot-plugged through libvirt, appears in the guest with its MAC, and is unplugged, the tap left alone', async () => {
    // Made as the privileged helper makes them: owned by the session user. This
    // libvirtd and its QEMU run as root in the host's network namespace, so
    // libvirt opens it by name either way. Not the helper's xdpvmN names: the
    // network tests may be counting those.
    const tap = `xdpvmlv${process.pid % 10_000}`;
    const mac = '02:5a:4c:56:00:01';
    await runProgram('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap', 'user', String(sessionUser().uid)]);
    cleanups.push(() => runProgram('ip', ['tuntap', 'del', 'dev', tap, 'mode', 'tap']));
    const seen = events(adapter);
    const nicWithMac = `for t in $(seq 100); do for n in /sys/class/net/*; do [ "$(cat $n/address)" = "${mac}" ] && echo \${n##*/}; done | grep . && break; sleep 0.1; done; true`;

    const t0 = Date.now();
    const attached = await adapter.attachNet({ id: 'lan', backend: { type: 'tap', tapName: tap }, mac });
    expect(attached).toEqual({ kind: 'net', id: 'lan', deviceId: 'ua-xdpvm-net-lan', location: expect.stringMatching(/^pci\.\d+$/) });
    expect(await guest.agent.check(nicWithMac)).toMatch(/^eth\d+\n$/);
    const seenMs = Date.now() - t0;
    expect(await adapter.listNet()).toEqual([{ kind: 'net', id: 'lan', deviceId: 'ua-xdpvm-net-lan', location: attached.location }]);

    const t1 = Date.now();
    await adapter.detachNet('lan');
    const unplugMs = Date.now() - t1;
    expect(await guest.agent.check(`for n in /sys/class/net/*; do [ "$(cat $n/address)" = "${mac}" ] && echo \${n##*/}; done; true`)).toBe('');
    expect(await adapter.listNet()).toEqual([]);
    // managed='no': libvirt did not delete the tap; that is for its owner.
    expect(existsSync(`/sys/class/net/${tap}`)).toBe(true);
    expect(seen).toEqual([{ type: 'device-detached', kind: 'net', id: 'lan', deviceId: 'ua-xdpvm-net-lan', expected: true }]);
    console.log(`libvirt NIC: attach → guest sees the MAC ${seenMs} ms, detach ${unplugMs} ms`);
  });

  it("a host USB device: refused before libvirt on a domain without a USB bus; on one with a bus, libvirt's refusal of an absent device, translated, and the domain and adapter carry on", async () => {
    const absent: UsbSpec = { id: 'stick', vendorId: 0x46f4, productId: 0x0001, hostBus: 1, hostAddress: 99 };
    const device = 'USB device stick (46f4:0001 at host bus 1 address 99)';
    // The guest above has USB turned off, and libvirt 9.0 cannot hot-plug a USB controller.
    expect(await lv.virsh(['dumpxml', '--domain', guest.domain])).toMatch(/<controller type='usb' index='0' model='none'>/);
    await expect(adapter.attachUsb(absent)).rejects.toThrow(`${device}: domain ${guest.domain} has no USB controller`);
    expect(await adapter.listUsb()).toEqual([]);

    // A bare q35 domain with a USB bus: no kernel or disk (the firmware finds nothing to boot), which is all a refused attach needs.
    const bare = `xdpvm-usb-${process.pid}`;
    const domainXml = path.join(scratch, 'usb-domain.xml');
    writeFileSync(
      domainXml,
      `<domain type='qemu'><name>${bare}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os>` +
        `<devices><emulator>${requireProgram('qemu-system-x86_64')}</emulator><controller type='usb' model='qemu-xhci'/><memballoon model='none'/></devices></domain>`,
    );
    await lv.virsh(['create', '--file', domainXml]);
    const usbAdapter = await LibvirtAdapter.connect({ domain: bare, uri: lv.uri, name: 'usb', pollMs: 1000 }).catch(async (err: unknown) => {
      await lv.virsh(['destroy', '--domain', bare]);
      throw err;
    });
    try {
      const seen = events(usbAdapter);
      // libvirtd looks the device up in sysfs itself; this machine has no USB bus at all.
      const why = existsSync('/sys/bus/usb')
        ? /Did not find USB device .*; the device is not at that bus and address now: unplugged, or renumbered by a replug$/
        : /cannot open directory '\/sys\/bus\/usb\/devices': No such file or directory; libvirtd sees no USB bus on this host, so the device is not there$/;
      for (const round of [1, 2]) {
        const err = await usbAdapter.attachUsb(absent).then(() => undefined, (e: unknown) => e);
        expect(err, `round ${round}`).toBeInstanceOf(VmmError);
        expect((err as VmmError).message.startsWith(`${device}: attach-device failed: `)).toBe(true);
        expect((err as VmmError).message).toMatch(why);
      }
      expect((await lv.virsh(['domstate', '--domain', bare])).trim()).toBe('running');
      expect(await usbAdapter.listUsb()).toEqual([]);
      expect(await lv.virsh(['dumpxml', '--domain', bare])).not.toContain('<hostdev');
      await expect(usbAdapter.detachUsb('stick')).rejects.toThrow(`USB device stick is not attached to domain ${bare}`);
      expect(seen).toEqual([]);
    } finally {
      await usbAdapter.close();
      await lv.virsh(['destroy', '--domain', bare]);
    }
  });

  it('connecting to a domain libvirt does not know fails plainly', async () => {
    await expect(LibvirtAdapter.connect({ domain: 'xdpvm-no-such-domain', uri: lv.uri })).rejects.toThrow(/libvirt domain xdpvm-no-such-domain at .*: (failed to get domain|Domain not found)/);
  });

  // Last in this block: it stops the guest the tests above share.
  it('when the domain stops, the adapter reports vmm-gone', async () => {
    const gone = new Promise<VmmEvent>((resolve) => adapter.events.subscribe((e) => e.type === 'vmm-gone' && resolve(e)));
    const t0 = Date.now();
    const { graceful } = await guest.shutdown();
    expect(graceful).toBe(true);
    expect(await gone).toEqual({ type: 'vmm-gone', reason: expect.stringMatching(new RegExp(`domain ${guest.domain} stopped \\(Stopped`)) });
    console.log(`libvirt: vmm-gone ${Date.now() - t0} ms after the guest was told to power off`);
  });
});

describe('the host daemon with vmm type "libvirt"', () => {
  let world: World;
  let guest: LibvirtGuest;
  const domain = `xdpvm-work-${process.pid}`;

  beforeAll(async () => {
    world = await World.start([{ name: 'work', label: 'Work', qemu: true }]);
    cleanups.push(() => world.stop());
    // World writes a QMP VM; the same VM, driven through libvirt instead.
    await world.stopDaemon();
    const config = JSON.parse(readFileSync(world.configPath, 'utf8')) as { vms: Record<string, Record<string, unknown>> };
    config.vms.work!.vmm = { type: 'libvirt', domain, uri: lv.uri };
    writeFileSync(world.configPath, JSON.stringify(config, null, 2));
    await world.startDaemon();
    const handed = world.handVmSockets('work');
    guest = await bootLibvirtGuest(lv, { name: 'work', domain, rootPorts: 2, channels: [{ name: PORTAL_PORT, socketPath: world.vmPaths('work').portal }] }).finally(handed);
    cleanups.push(() => guest.cleanup());
    await sh(guestSetupScript());
  });

  async function sh(script: string, timeoutMs = 90_000): Promise<string> {
    const r = await guest.agent.run(`${GUEST_ENV}\n${script}`, { timeoutMs });
    if (r.status !== 0) throw new Error(`guest: exit ${r.status}\n${script}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
    return r.stdout;
  }

  async function app(args: string[]): Promise<AppResult> {
    const out = await sh(`node ${GUEST_APP} ${args.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')}`);
    return JSON.parse(out.trim().split('\n').at(-1)!) as AppResult;
  }

  it('OpenFile: the daemon hot-plugs the share through libvirt on the first grant, and the app reads the host bytes', async () => {
    const chosen = path.join(world.root, 'q4.txt');
    world.hostFile(chosen, 'Q4 numbers, via libvirt');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${chosen}`] }));
    expect(await lv.virsh(['dumpxml', '--domain', domain])).not.toContain('ua-xdpvm-fs-xdpvm-doc');
    const r = await app(['open', 'Open Report']);
    expect(r.response).toBe(0);
    expect(r.files).toEqual([expect.objectContaining({ path: expect.stringMatching(new RegExp(`^${QEMU_GUEST_MOUNT}/\\w+/q4\\.txt$`)), content: 'Q4 numbers, via libvirt' })]);
    expect(world.dialog.calls.at(-1)!.title).toBe('Work: Open Report');
    expect(await lv.virsh(['dumpxml', '--domain', domain])).toMatch(/<target dir='xdp-vm-doc'\/>\s*<alias name='ua-xdpvm-fs-xdpvm-doc'\/>/);
    expect(world.daemonLog.some((l) => l.includes('plugged the document share into the running VM') && l.includes('"vm":"work"'))).toBe(true);
    console.log(`libvirt product path: app open → content in ${Math.round(r.ms)} ms (includes the hot-plug)`);
  });

  it('revoking everything of the VM unmounts in the guest and unplugs the share through libvirt', async () => {
    const { stdout } = await world.cli(['grants', 'revoke', 'work', '--all']);
    expect(stdout).toMatch(/Revoked 1 grant\(s\) from work and unplugged its share/);
    expect(await sh(`grep -c ' ${QEMU_GUEST_MOUNT} ' /proc/mounts || true`)).toBe('0\n');
    expect(await lv.virsh(['dumpxml', '--domain', domain])).not.toContain('ua-xdpvm-fs-xdpvm-doc');
    expect(await sh('ls /sys/bus/virtio/drivers/virtiofs | grep -c virtio || true')).toBe('1\n');
  });

  it('the daemon notices the domain stopping', async () => {
    await guest.shutdown();
    await expect.poll(() => world.daemonLog.some((l) => l.includes('"vm":"work"') && l.includes('the VMM went away')), { timeout: 20_000 }).toBe(true);
  });
});
