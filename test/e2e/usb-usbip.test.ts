import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { whichProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { parseAuditLines } from '../../src/host/audit.js';
import { cliEntry } from '../../src/paths.js';
import { bootPortalVm, type PortalVm } from '../../src/testbed/qemu/portal-vm.js';
import { patternImage, usbipModules, type PatternImage } from '../../src/testbed/usbip-kit.js';
import { World } from '../../src/testbed/world.js';
import { BACKEND_BUS_NAME } from '../../src/guest/backend.js';
import { USB_INTERFACE, USB_PATH } from '../../portals/usb/names.js';

/**
 * Qubes' sys-usb model end to end, on real kernels: VM "sys-usb" owns an
 * xHCI controller with a USB stick (QEMU's usb-storage over an image of
 * known bytes) and is the config's USB provider; VM "work" asks for the
 * stick with `xdp-vm usb`. The host daemon (run as the user) asks the
 * policy, hot-plugs a virtserialport into each VM over QMP, and relays the
 * bytes between them; sys-usb's root agent binds the stick to usbip-host
 * and hands it its channel's stream, work's root agent hands its own to
 * vhci-hcd. work's kernel then enumerates the stick, and the test reads the
 * known bytes from the disk it makes. Then: detach takes it away and gives
 * it back to sys-usb's usb-storage; an "Always" row brings it back after
 * work reboots, and after the stick is unplugged from sys-usb and plugged in
 * again (over sys-usb's own QMP, as a hand would); a VM a row denies never
 * sees it.
 */
const SLOW = 420_000;
const NODE = process.execPath;
const CLI = cliEntry();
const SERIAL = 'XDPVM-USBIP-E2E';
/** udev's ID_SERIAL for QEMU's stick: manufacturer "QEMU", product "QEMU USB HARDDRIVE", our serial. */
const KEY = `usb:46f4/0001/QEMU_QEMU_USB_HARDDRIVE_${SERIAL}`;

let world: World;
let sysUsb: PortalVm | undefined;
let work: PortalVm | undefined;
let dir: string;
let image: PatternImage;
let insmod: string;

interface Listed {
  id: string;
  key: string;
  state: string;
}

async function ready(vm: PortalVm): Promise<void> {
  // As network.test.ts: the backend starts by D-Bus activation, which can outlast the bus's 25 s timeout under TCG; ask again.
  await vm.sh(
    'for i in 1 2 3 4 5; do dbus-send --session --print-reply --reply-timeout=60000 --dest=org.freedesktop.impl.portal.desktop.vm /org/freedesktop/portal/desktop org.freedesktop.DBus.Peer.Ping >/dev/null && exit 0; sleep 2; done; exit 1',
    330_000,
  );
}

async function bootWork(): Promise<PortalVm> {
  work = await bootPortalVm(world, 'work', { rootPorts: 2, prepare: insmod });
  await ready(work);
  return work;
}

const usbIn = (vm: PortalVm, args: string) => vm.sh(`${NODE} ${CLI} usb ${args}`, 200_000);
const listIn = async (vm: PortalVm) => JSON.parse(await usbIn(vm, 'list --json')) as Listed[];
const stickIn = async (vm: PortalVm) => (await listIn(vm)).find((d) => d.key === KEY);
const audit = () => parseAuditLines(readFileSync(world.auditFile, 'utf8').split('\n')).filter((l) => l.portal === 'Usb');

/** The disk in `vm` whose device is on vhci-hcd (an imported USB device), once there is one, within `seconds`; '' if none. */
async function vhciDisk(vm: PortalVm, seconds: number): Promise<string> {
  return (
    await vm.sh(
      `i=0; while [ $i -lt ${seconds * 10} ]; do for b in /sys/block/sd*; do [ -e "$b" ] || continue; readlink -f "$b" | grep -q /vhci_hcd && { echo "\${b##*/}"; exit 0; }; done; i=$((i + 1)); sleep 0.1; done; true`,
      seconds * 1000 + 20_000,
    )
  ).trim();
}

async function expectKnownBytes(vm: PortalVm, disk: string): Promise<void> {
  const { offset, text } = image.marker;
  expect(await vm.sh(`dd if=/dev/${disk} bs=1 skip=${offset} count=${text.length} status=none`)).toBe(text);
  expect(await vm.sh(`sha256sum /dev/${disk}`, 120_000)).toBe(`${image.sha256}  /dev/${disk}\n`);
}

/** The stick's bus id in sys-usb, and the driver its device and its interface have there. */
async function stickInSysUsb(): Promise<{ busid: string; driver: string; storage: boolean }> {
  const out = await sysUsb!.sh(
    `for d in /sys/bus/usb/devices/*; do [ "$(cat $d/serial 2>/dev/null)" = ${SERIAL} ] || continue; b=\${d##*/}; echo "$b $(basename "$(readlink $d/driver)") $([ -e $d/$b:1.0/driver ] && basename "$(readlink $d/$b:1.0/driver)")"; done`,
  );
  const [busid = '', driver = '', iface = ''] = out.trim().split(' ');
  return { busid, driver, storage: iface === 'usb-storage' };
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-usb-usbip-'));
  world = await World.start(
    [
      { name: 'sys-usb', label: 'sys-usb', qemu: true, usb: { provider: true } },
      { name: 'work', label: 'Work', qemu: true },
      // A guest session on this machine, no QEMU: enough to see what it is offered.
      { name: 'shop', label: 'Shop' },
    ],
    { daemonEnv: { DBUS_SYSTEM_BUS_ADDRESS: 'unix:path=/nonexistent/system_bus_socket' } },
  );
  image = patternImage(path.join(dir, 'stick.img'), `${SERIAL} KNOWN BYTES`);
  world.own(dir);
  const busybox = whichProgram(['/bin/busybox', '/usr/bin/busybox']);
  if (!busybox) throw new Error('busybox is missing: install busybox-static (scripts/setup.sh tests)');
  insmod = (await usbipModules()).map((m) => `${busybox} insmod ${m}`).join(' && ');
  sysUsb = await bootPortalVm(world, 'sys-usb', {
    rootPorts: 2,
    prepare: insmod,
    extraQemuArgs: ['-device', 'qemu-xhci,id=xhci', '-drive', `if=none,id=stick,format=raw,readonly=on,file=${image.file.replaceAll(',', ',,')}`, '-device', `usb-storage,bus=xhci.0,drive=stick,serial=${SERIAL},id=stick-dev`],
  });
  await ready(sysUsb);
  await bootWork();
  await world.cli(['permissions', 'set', 'shop', 'Usb', 'deny', KEY]);
}, SLOW);

afterAll(async () => {
  await work?.guest.cleanup();
  await sysUsb?.guest.cleanup();
  await world?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('a USB stick from sys-usb into work, by USB/IP through the host', () => {
  it('work is offered the stick; a VM a row denies is not; the host lists it with nobody holding it', async () => {
    expect(await stickIn(work!)).toMatchObject({ id: expect.stringMatching(/^sys-usb\.b\d+d\d+$/), state: 'free' });
    const shopEnv = { ...world.guest('shop').bus.env };
    const shop = await runProgram(NODE, [CLI, 'usb', 'list', '--json'], { env: shopEnv, timeoutMs: 60_000 });
    expect(JSON.parse(shop.stdout)).toEqual([]);
    // Asked for by its id all the same, it is not there as far as shop can tell: not to its CLI, nor on its backend's bus.
    const id = (await stickIn(work!))!.id;
    const failed = (err: Error & { stderr?: string }) => err.stderr ?? err.message;
    const byCli = await runProgram(NODE, [CLI, 'usb', 'attach', id], { env: shopEnv, timeoutMs: 60_000 }).then(() => 'attached', failed);
    expect(byCli).toContain(`the host offers this VM no USB device "${id}"`);
    const gdbus = whichProgram(['gdbus']);
    if (!gdbus) throw new Error('gdbus is missing: install libglib2.0-bin (scripts/setup.sh tests)');
    const direct = await runProgram(gdbus, ['call', '--session', '--dest', BACKEND_BUS_NAME, '--object-path', USB_PATH, '--method', `${USB_INTERFACE}.AcquireDevice`, id], { env: shopEnv, timeoutMs: 60_000 }).then(() => 'attached', failed);
    expect(direct).toContain(`org.freedesktop.portal.Error.InvalidArgument: no USB device ${id} in VM "sys-usb" now`);
    const host = JSON.parse((await world.cli(['usb', 'list', '--json'])).stdout) as { id: string; key: string; holder: string }[];
    expect(host.find((d) => d.key === KEY)).toMatchObject({ holder: '' });
    // sys-usb is never offered its own stick.
    expect(await stickIn(sysUsb!)).toBeUndefined();
  }, SLOW);

  it('attached with the policy\'s allow: work\'s kernel enumerates it on vhci-hcd and reads the known bytes', async () => {
    await world.cli(['permissions', 'set', 'work', 'Usb', 'allow', KEY]);
    const stick = (await stickIn(work!))!;
    const t0 = Date.now();
    const out = await usbIn(work!, `attach ${stick.id}`);
    expect(out).toMatch(/^Attached 'QEMU USB HARDDRIVE' \(46f4:0001\) \(usb:46f4\/0001\/QEMU_QEMU_USB_HARDDRIVE_XDPVM-USBIP-E2E\): on this VM's USB bus as \S+\.$/m);
    const disk = await vhciDisk(work!, 60);
    console.info(`[timing] attach to disk in work: ${Date.now() - t0} ms`);
    expect(disk).not.toBe('');
    await expectKnownBytes(work!, disk);
    expect(await stickIn(work!)).toMatchObject({ state: 'here' });
    expect((await stickInSysUsb()).driver).toBe('usbip-host');
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'allow', reason: 'policy', asked: { key: KEY, from: 'sys-usb', by: 'usbip', attached: true } });
  }, SLOW);

  it('detach takes it from work, and sys-usb\'s usb-storage has it again', async () => {
    const stick = (await stickIn(work!))!;
    expect(await usbIn(work!, `detach ${stick.id}`)).toMatch(/Detached 'QEMU USB HARDDRIVE' \(46f4:0001\): it is the host's again/);
    expect(await vhciDisk(work!, 1)).toBe('');
    await expect.poll(stickInSysUsb, { timeout: 60_000, interval: 500 }).toMatchObject({ driver: 'usb', storage: true });
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'revoke', asked: { key: KEY, detached: true } });
  }, SLOW);

  it('the "Always" row attaches it again when work has rebooted', async () => {
    // The row from the attach above names the stick: it applies whenever work's guest connects.
    await work!.shutdown();
    await work!.guest.cleanup();
    work = undefined;
    await expect.poll(async () => ((JSON.parse((await world.cli(['usb', 'list', '--json'])).stdout) as { key: string; holder: string }[]).find((d) => d.key === KEY)?.holder), { timeout: 60_000 }).toBe('');
    await bootWork();
    const disk = await vhciDisk(work!, 120);
    expect(disk).not.toBe('');
    await expectKnownBytes(work!, disk);
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'allow', reason: 'policy', asked: { via: 'always', by: 'usbip' } });
  }, SLOW);

  it('unplugged from sys-usb, it leaves work; plugged in again, the "Always" row follows it', async () => {
    const qmp = sysUsb!.guest.qmp;
    const deleted = qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data.device === 'stick-dev', { timeoutMs: 30_000 });
    await qmp.execute('device_del', { id: 'stick-dev' });
    await deleted;
    await expect.poll(() => vhciDisk(work!, 1), { timeout: 60_000, interval: 1000 }).toBe('');
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'revoke', asked: { key: KEY, why: 'the device was unplugged from VM "sys-usb"' } });
    // The legacy -drive went with its device: plug the same image in again as a new node.
    await qmp.execute('blockdev-add', { driver: 'raw', 'node-name': 'stick2', 'read-only': true, file: { driver: 'file', filename: image.file, 'read-only': true } });
    await qmp.execute('device_add', { driver: 'usb-storage', bus: 'xhci.0', drive: 'stick2', serial: SERIAL, id: 'stick-dev' });
    const disk = await vhciDisk(work!, 90);
    expect(disk).not.toBe('');
    await expectKnownBytes(work!, disk);
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'allow', reason: 'policy', asked: { via: 'always', by: 'usbip', from: 'sys-usb' } });
  }, SLOW);
});
