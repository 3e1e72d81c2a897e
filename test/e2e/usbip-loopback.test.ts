import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { whichProgram } from '../../src/deps.js';
import { packageRoot } from '../../src/paths.js';
import { bootGuest, type Guest } from '../../src/testbed/qemu/vm.js';
import type { AgentVsock, Loopback, Refusal } from '../../src/testbed/usbip-guest.js';
import { patternImage, usbipModules, type PatternImage } from '../../src/testbed/usbip-kit.js';
import type { ExportableDevice, UsbipHostStatus, VhciPlace, VhciPort } from '../../src/usb/usbip.js';

/**
 * src/usb/usbip.ts against a real kernel's USB/IP, both halves in one TCG
 * guest. QEMU's xHCI has two usb-storage sticks, each an image of known
 * bytes: one on a root port, where QEMU makes it a SuperSpeed device, and
 * one behind a (full-speed) hub; they are the exporting side's devices,
 * bound to usbip-host. The guest's vhci-hcd is the importing side, so each
 * stick lands on the vhci root hub of its speed. A node process in the guest
 * (src/testbed/usbip-guest.ts, built) connects a stream to itself and hands
 * one end to each side, as the host daemon's relay will hand them the ends
 * of its two transports, then exits: the kernel holds the sockets from
 * there. The guest must see each stick again as a new disk on the vhci bus
 * and read its known bytes; detaching (from either side) must unplug it,
 * and unbinding must give each stick back to usb-storage.
 */
const SLOW = 240_000;
const GUEST_SCRIPT = path.join(packageRoot(), 'dist', 'src', 'testbed', 'usbip-guest.js');
const BUILT = [
  [path.join(packageRoot(), 'dist', 'src', 'usb', 'usbip.js'), path.join(packageRoot(), 'src', 'usb', 'usbip.ts')],
  [GUEST_SCRIPT, path.join(packageRoot(), 'src', 'testbed', 'usbip-guest.ts')],
  [path.join(packageRoot(), 'dist', 'src', 'guest', 'usb-agent.js'), path.join(packageRoot(), 'src', 'guest', 'usb-agent.ts')],
  [path.join(packageRoot(), 'dist', 'src', 'helper', 'operations.js'), path.join(packageRoot(), 'src', 'helper', 'operations.ts')],
] as const;

interface Stick {
  serial: string;
  image: PatternImage;
  /** Found in the guest: the stick's bus id on the xHCI bus, and what usbip.ts reads of it. */
  busid: string;
  device: ExportableDevice;
}

const STICKS = {
  /** On a root port: QEMU's usb-storage is a SuperSpeed device there. */
  ss: { serial: 'XDPVM-USBIP-SS', qemu: 'bus=xhci.0,port=1' },
  /** Behind QEMU's usb-hub, a full-speed hub: so is the stick. */
  fs: { serial: 'XDPVM-USBIP-FS', qemu: 'bus=xhci.0,port=2.1' },
} as const;

let guest: Guest;
let dir: string;
const sticks = {} as Record<keyof typeof STICKS, Stick>;

/** usbip-guest.js VERB ARGS in the guest, as root: its JSON line. */
async function usbip<T>(...args: string[]): Promise<T> {
  const t = Date.now();
  const stdout = await guest.agent.check(`node ${GUEST_SCRIPT} ${args.join(' ')}`, { timeoutMs: 90_000 });
  console.info(`[timing] usbip-guest ${args.join(' ')}: ${Date.now() - t} ms`);
  return JSON.parse(stdout) as T;
}

/** The kernel's last words, for a failure message. */
const dmesg = async () => (await guest.agent.run('dmesg | tail -n 25')).stdout;

/** Until `test CONDITION` holds in the guest, every 0.1 s, for at most `seconds`; the kernel log in the error otherwise. */
async function waitInGuest(condition: string, seconds: number, what: string): Promise<number> {
  const t = Date.now();
  const result = await guest.agent.run(`i=0; until ${condition}; do [ $((i += 1)) -lt ${seconds * 10} ] || exit 1; sleep 0.1; done`, { timeoutMs: seconds * 1000 + 10_000 });
  if (result.status !== 0) throw new Error(`${what}: not within ${seconds} s (${condition})\n${await dmesg()}`);
  return Date.now() - t;
}

/** Each SCSI disk with the sysfs path of its device, e.g. sda → /sys/devices/platform/vhci_hcd.0/usb3/3-1/3-1:1.0/…/block/sda. */
async function disks(): Promise<Array<{ disk: string; path: string }>> {
  const out = await guest.agent.check('for b in /sys/block/sd*; do [ -e "$b" ] && echo "${b##*/} $(readlink -f "$b")"; done; true');
  return out.split('\n').filter(Boolean).map((l) => ({ disk: l.split(' ')[0]!, path: l.split(' ')[1]! }));
}

/** The USB device a disk's path passes through: the bus id before its interface's ":CONFIG.IFACE". */
const usbDeviceOf = (devicePath: string) => /\/([0-9]+-[0-9.]+):[0-9]+\.[0-9]+\//.exec(devicePath)?.[1];

/** The disk of USB device `busid`, once there is one. */
async function diskOf(busid: string, what: string): Promise<string> {
  const ms = await waitInGuest(`for b in /sys/block/sd*; do readlink -f "$b" 2>/dev/null; done | grep -q '/${busid}:'`, 60, `${what} (${busid}) has no disk`);
  const found = (await disks()).filter((d) => usbDeviceOf(d.path) === busid);
  if (found.length !== 1) throw new Error(`expected one disk of ${busid}, found ${JSON.stringify(found)}`);
  console.info(`[timing] ${what}: ${busid} is ${found[0]!.disk} after ${ms} ms`);
  return found[0]!.disk;
}

/** The disk's known bytes: the marker where it was written, and the whole image's hash. */
async function expectImageOn(disk: string, image: PatternImage): Promise<void> {
  const { offset, text } = image.marker;
  expect(await guest.agent.check(`dd if=/dev/${disk} bs=1 skip=${offset} count=${text.length} status=none`)).toBe(text);
  expect(await guest.agent.check(`sha256sum /dev/${disk}`, { timeoutMs: 60_000 })).toBe(`${image.sha256}  /dev/${disk}\n`);
}

const statusOf = (stick: Stick) => usbip<{ status: UsbipHostStatus }>('status', stick.busid).then((s) => s.status);
const offeredAgain = (stick: Stick) => waitInGuest(`grep -qx 1 /sys/bus/usb/devices/${stick.busid}/usbip_status`, 30, `usbip-host offering ${stick.busid} again`);
const driverOf = async (busid: string) => (await guest.agent.check(`basename "$(readlink /sys/bus/usb/devices/${busid}/driver)"`)).trim();

/** The stick's loopback link up, and its disk on the vhci bus read back. */
async function importAndRead(stick: Stick, kind: 'tcp' | 'unix'): Promise<{ link: Loopback; port: VhciPort }> {
  const link = await usbip<Loopback>('loopback', stick.busid, kind);
  // The node process has exited: from here only the kernel's references hold the stream.
  expect(link.device).toEqual(stick.device);
  expect(link.place.hub).toBe(stick.device.speed >= 5 ? 'ss' : 'hs');
  await waitInGuest(`grep -Eq '^${link.place.hub}  ${String(link.place.port).padStart(4, '0')} 006 ' /sys/devices/platform/vhci_hcd.0/status`, 60, `vhci port ${link.place.port} in use`);
  const port = (await usbip<VhciPort[]>('attached')).find((p) => p.port === link.place.port);
  expect(port).toEqual({ ...link.place, state: 'used', speed: stick.device.speed, devid: stick.device.devid, sockfd: link.fds.imported, localBusid: expect.any(String) });
  await expectImageOn(await diskOf(port!.localBusid!, `${stick.serial} imported over ${kind}`), stick.image);
  return { link, port: port! };
}

const gone = (localBusid: string) => `[ ! -e /sys/bus/usb/devices/${localBusid} ] && ! { for b in /sys/block/sd*; do readlink -f "$b" 2>/dev/null; done | grep -q '/${localBusid}:'; }`;

beforeAll(async () => {
  for (const [built, source] of BUILT) {
    if (!existsSync(built) || statSync(built).mtimeMs < statSync(source).mtimeMs) throw new Error(`${built} is missing or older than ${source}: run npm run build first`);
  }
  dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-usbip-loopback-'));
  const images = Object.fromEntries(Object.entries(STICKS).map(([k, s]) => [k, patternImage(path.join(dir, `${k}.img`), `${s.serial} KNOWN BYTES`)]));
  const modules = await usbipModules();
  // The host's root (the guest's) need not have kmod; the harness's static busybox is there.
  const busybox = whichProgram(['/bin/busybox', '/usr/bin/busybox']);
  if (!busybox) throw new Error('busybox is missing: install busybox-static (scripts/setup.sh tests)');
  guest = await bootGuest({
    name: 'usbip-loopback',
    modules: ['core', 'usb'],
    extraQemuArgs: [
      '-device', 'qemu-xhci,id=xhci',
      '-device', 'usb-hub,bus=xhci.0,port=2',
      ...Object.entries(STICKS).flatMap(([k, s]) => [
        '-drive', `if=none,id=${k},format=raw,readonly=on,file=${images[k]!.file.replaceAll(',', ',,')}`,
        '-device', `usb-storage,${s.qemu},drive=${k},serial=${s.serial}`,
      ]),
    ],
  });
  console.info(`[timing] boot (${guest.accel.accel}): agent ready ${guest.timings.agentReadyMs} ms`);
  await guest.agent.check(modules.map((m) => `${busybox} insmod ${m}`).join(' && '));
  // The guest's init brings no interface up; the TCP stream needs its loopback.
  await guest.agent.check(`${busybox} ip link set lo up`);
  await waitInGuest('[ -e /sys/devices/platform/vhci_hcd.0/status ] && [ -e /sys/bus/usb/drivers/usbip-host ] && [ -e /sys/block/sdb ]', 60, 'usbip-host, vhci-hcd and both sticks');
  for (const { path: p } of await disks()) {
    const busid = usbDeviceOf(p);
    if (!busid) throw new Error(`a disk that is not on USB: ${p}`);
    const serial = (await guest.agent.check(`cat /sys/bus/usb/devices/${busid}/serial`)).trim();
    const key = (Object.keys(STICKS) as Array<keyof typeof STICKS>).find((k) => STICKS[k].serial === serial);
    if (!key) throw new Error(`a disk at ${busid} with serial ${serial}, not one of the sticks`);
    sticks[key] = { serial, image: images[key]!, busid, device: undefined as unknown as ExportableDevice };
  }
}, SLOW);

afterAll(async () => {
  await guest?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('USB/IP through sysfs, both kernel halves in one guest', () => {
  it('binds each stick to usbip-host, as usbip bind does: usb-storage lets it go', async () => {
    for (const stick of Object.values(sticks)) {
      const disk = await diskOf(stick.busid, stick.serial);
      await expectImageOn(disk, stick.image);
      stick.device = await usbip<ExportableDevice>('device', stick.busid);
      const [busnum, devnum] = (await guest.agent.check(`cat /sys/bus/usb/devices/${stick.busid}/busnum /sys/bus/usb/devices/${stick.busid}/devnum`)).split('\n').map(Number);
      expect(stick.device).toEqual({ busid: stick.busid, busnum, devnum, devid: busnum! * 65536 + devnum!, speed: expect.any(Number) });
      console.info(`[usbip] ${stick.serial} at ${stick.busid} (${disk}): devid ${stick.device.devid.toString(16)}, speed ${stick.device.speed}`);
      await usbip('bind', stick.busid);
      expect(await driverOf(stick.busid)).toBe('usbip-host');
      await waitInGuest(`[ ! -e /sys/block/${disk} ]`, 30, `${disk} going away once usbip-host has ${stick.busid}`);
      expect(await statusOf(stick)).toBe('available');
    }
    // usb_device_speed: SuperSpeed on the root port, full speed behind QEMU's USB 1.1 hub.
    expect([sticks.ss.device.speed, sticks.fs.device.speed]).toEqual([5, 2]);
    expect(sticks.fs.busid).toMatch(/\./);
  }, SLOW);

  it("reports each side's refusal of an fd that is no socket with the kernel's errno, and nothing is taken", async () => {
    const stick = sticks.ss;
    const { exporting, importing } = await usbip<{ exporting: Refusal; importing: Refusal }>('refusals', stick.busid);
    expect(exporting).toMatchObject({ kind: 'kernel', errno: 'EINVAL', message: expect.stringMatching(new RegExp(`^usbip-host did not take fd [0-9]+ for ${stick.busid}: the kernel answered EINVAL \\(not a stream socket`)) });
    expect(importing).toMatchObject({ kind: 'kernel', errno: 'EINVAL', message: expect.stringMatching(/^vhci-hcd did not attach fd [0-9]+ on port [0-9]+: the kernel answered EINVAL \(not a stream socket of this process\)/) });
    expect(await statusOf(stick)).toBe('available');
    expect(await usbip<VhciPort[]>('attached')).toEqual([]);
  }, SLOW);

  it('hands the ends of loopback TCP streams to usbip-host and vhci-hcd: each stick is a new disk on the vhci hub of its speed, with its bytes', async () => {
    const ss = await importAndRead(sticks.ss, 'tcp');
    const fs = await importAndRead(sticks.fs, 'tcp');
    expect([ss.port.hub, fs.port.hub]).toEqual(['ss', 'hs']);
    expect((await usbip<VhciPort[]>('attached')).map((p) => p.port)).toEqual([fs.port.port, ss.port.port]);
    expect([await statusOf(sticks.ss), await statusOf(sticks.fs)]).toEqual(['used', 'used']);

    for (const [stick, { port }] of [[sticks.ss, ss], [sticks.fs, fs]] as const) {
      await usbip('detach', String(port.port));
      await waitInGuest(gone(port.localBusid!), 30, `${port.localBusid} leaving the vhci bus`);
      // usbip-host sees its stream end, resets the stick and offers it again.
      await offeredAgain(stick);
    }
    expect(await usbip<VhciPort[]>('attached')).toEqual([]);
  }, SLOW);

  it('does the same over a Unix stream socket, and the exporting side can end the link', async () => {
    const { port } = await importAndRead(sticks.ss, 'unix');
    await usbip('stop', sticks.ss.busid);
    await waitInGuest(gone(port.localBusid!), 30, `${port.localBusid} leaving the vhci bus once usbip-host stops`);
    await waitInGuest(`grep -Eq '^${port.hub}  ${String(port.port).padStart(4, '0')} 004 ' /sys/devices/platform/vhci_hcd.0/status`, 30, `vhci port ${port.port} freed`);
    expect(await usbip<VhciPort[]>('attached')).toEqual([]);
    await offeredAgain(sticks.ss);
  }, SLOW);

  /** The agent's side over vsock, then the device read on the vhci bus and detached again. */
  async function overVsock(stick: Stick, direction: 'import' | 'export', vsockPort: number): Promise<void> {
    const r = await usbip<AgentVsock>('agent-vsock', stick.busid, direction, String(vsockPort));
    expect(r.device).toEqual(stick.device);
    const port = (await usbip<VhciPort[]>('attached')).find((p) => p.port === r.vhciPort);
    expect(port).toMatchObject({ state: 'used', devid: stick.device.devid, speed: stick.device.speed });
    await expectImageOn(await diskOf(port!.localBusid!, `${stick.serial}, the agent's ${direction} over vsock`), stick.image);
    await usbip('detach', String(r.vhciPort));
    await waitInGuest(gone(port!.localBusid!), 30, `${port!.localBusid} leaving the vhci bus`);
    await offeredAgain(stick);
  }

  it("the root agent imports over a real AF_VSOCK stream: the connection it accepted on its reserved port goes to vhci-hcd itself, with no relay", async () => {
    await overVsock(sticks.fs, 'import', 700);
  }, SLOW);

  it('the root agent exports over AF_VSOCK the same way: its accepted connection goes to usbip-host', async () => {
    await overVsock(sticks.ss, 'export', 701);
  }, SLOW);

  it("a process of the VM's own connecting to the agent's port is turned away, and nothing reaches vhci-hcd: only the host's connection is taken", async () => {
    const r = await usbip<{ refused: string; turnedAway: boolean }>('agent-vsock', sticks.fs.busid, 'import', '702', 'stranger');
    expect(r).toEqual({ refused: 'the host did not connect to vsock port 702 within 10 s', turnedAway: true });
    expect(await usbip<VhciPort[]>('attached')).toEqual([]);
    expect(await statusOf(sticks.fs)).toBe('available');
  }, SLOW);

  it('a user of the VM cannot listen on a reserved port in the agent\'s place', async () => {
    const asNobody = await guest.agent.run(`setpriv --reuid=65534 --regid=65534 --clear-groups -- node ${GUEST_SCRIPT} agent-vsock ${sticks.fs.busid} export 703`, { timeoutMs: 60_000 });
    expect(asNobody.status).not.toBe(0);
    expect(asNobody.stderr).toContain('vsock port 703 is reserved and this agent is not root');
  }, SLOW);

  it('unbinds: each stick is back with usb-storage, a disk on its own bus again', async () => {
    for (const stick of Object.values(sticks)) {
      await usbip('unbind', stick.busid);
      const disk = await diskOf(stick.busid, `${stick.serial} given back`);
      expect(await driverOf(stick.busid)).toBe('usb');
      await expectImageOn(disk, stick.image);
    }
    expect(await guest.agent.check('cat /sys/bus/usb/drivers/usbip-host/match_busid')).toBe('\n');
  }, SLOW);

  it("the privileged helper's usb-bind and usb-export on a real kernel: the stream it hands back carries the stick to vhci-hcd; usb-unbind gives it back to usb-storage", async () => {
    const stick = sticks.ss;
    const bound = await usbip<{ rule: string }>('helper', 'usb-bind', stick.busid);
    expect(bound.rule).toContain('usb root class:08');
    expect(await driverOf(stick.busid)).toBe('usbip-host');
    // Bound, the stick shows no interfaces in sysfs: the bind's class decision is what stands.
    const exported = await usbip<{ rule: string; place: VhciPlace }>('helper', 'usb-export', stick.busid);
    expect(exported.rule).toMatch(/^bound for uid 0 \(root\) by usb-bind/);
    expect(exported.place.hub).toBe('ss');
    const port = (await usbip<VhciPort[]>('attached')).find((p) => p.port === exported.place.port);
    expect(port).toMatchObject({ state: 'used', devid: stick.device.devid, speed: stick.device.speed });
    expect(await statusOf(stick)).toBe('used');
    await expectImageOn(await diskOf(port!.localBusid!, `${stick.serial}, exported by the helper`), stick.image);
    // A second export of a device on a link is refused with usbip-host's state.
    await expect(usbip('helper', 'usb-export', stick.busid)).rejects.toThrow(`${stick.busid} is already exported on a connection: stop that one first`);
    await usbip('helper', 'usb-unbind', stick.busid);
    await waitInGuest(gone(port!.localBusid!), 30, `${port!.localBusid} leaving the vhci bus once the helper unbinds`);
    const disk = await diskOf(stick.busid, `${stick.serial} given back by the helper`);
    expect(await driverOf(stick.busid)).toBe('usb');
    await expectImageOn(disk, stick.image);
  }, SLOW);
});
