import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { whichProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { packageRoot } from '../../src/paths.js';
import { defaultCacheDir, prepareGuestImage } from '../../src/testbed/qemu/guest-image.js';
import { bootGuest, type Guest } from '../../src/testbed/qemu/vm.js';
import type { BlockDevice, Offer, UsbHostDevice } from '../../src/usb/devices.js';
import { usbDeviceMinor } from '../../src/usb/devices.js';

/**
 * src/usb/devices.ts against a real kernel's sysfs: a TCG guest with QEMU's
 * xHCI controller, a hub with a mouse behind it, a keyboard, and a storage
 * stick (a small minix image, so the guest can mount it) with a serial of
 * ours. The guest runs the host's node on the built module (dist/), as the
 * daemon would on a host, and its answers are checked against what QEMU's
 * devices are (hw/usb/dev-storage.c, dev-hid.c, dev-hub.c). No udevd runs in
 * the guest, so ID_SERIAL is the computed one. Then hot-plug: the watcher runs
 * in the guest on Debian's own udevadm (unpacked into .cache/udev, never
 * installed: a udevd on this machine would change it, see design.md §6),
 * and a tablet is plugged in and out over QMP.
 */
const SLOW = 240_000;
const SERIAL = 'XDPVM-E2E-0042';
const MODULE = path.join(packageRoot(), 'dist', 'src', 'usb', 'devices.js');
const SOURCE = path.join(packageRoot(), 'src', 'usb', 'devices.ts');

type Listed = UsbHostDevice & { offer: Offer; key: string; blocks: BlockDevice[]; refusal: string | undefined };

let guest: Guest;
let dir: string;
let image: string;
let minixKo: string;
let busybox: string;

/** The minix module of the guest's kernel, from the unpacked kernel package the harness caches (the guest sees it: it sees the checkout). */
async function minixModule(): Promise<string> {
  const { kernelVersion } = await prepareGuestImage();
  const root = path.join(defaultCacheDir(), kernelVersion, 'root');
  const found = ['lib', path.join('usr', 'lib')].map((l) => path.join(root, l, 'modules', kernelVersion, 'kernel', 'fs', 'minix', 'minix.ko')).find((f) => existsSync(f));
  if (!found) throw new Error(`no minix.ko for ${kernelVersion} under ${root}`);
  return found;
}

/** A 1 MiB minix filesystem: content the guest can check byte for byte, and mount. */
async function stickImage(file: string): Promise<void> {
  writeFileSync(file, Buffer.alloc(1024 * 1024));
  const mkfs = whichProgram(['/sbin/mkfs.minix', '/usr/sbin/mkfs.minix', 'mkfs.minix']);
  if (!mkfs) throw new Error('mkfs.minix is missing: install util-linux (scripts/setup.sh tests)');
  await runProgram(mkfs, [file]);
}

/** Debian's udevadm, unpacked from the `udev` package apt would install, cached by version. */
async function unpackedUdevadm(): Promise<string> {
  const policy = (await runProgram('apt-cache', ['policy', 'udev'])).stdout;
  const version = /Candidate:\s*(\S+)/.exec(policy)?.[1];
  if (!version || version === '(none)') throw new Error(`apt knows no udev package (run apt-get update?): ${policy.trim()}`);
  const dir = path.join(packageRoot(), '.cache', 'udev', version.replace(/[^A-Za-z0-9.+~-]/g, '_'));
  const find = () => ['bin', path.join('usr', 'bin')].map((b) => path.join(dir, 'root', b, 'udevadm')).find((f) => existsSync(f));
  const cached = find();
  if (cached) return cached;
  mkdirSync(path.dirname(dir), { recursive: true });
  const staging = mkdtempSync(`${dir}.tmp-`);
  try {
    // apt-get warns when it downloads as root into a directory _apt cannot read; harmless.
    await runProgram('apt-get', ['download', `udev=${version}`], { cwd: staging, timeoutMs: 300_000 });
    const deb = readdirSync(staging).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download udev=${version} left no .deb in ${staging}`);
    await runProgram('dpkg-deb', ['-x', path.join(staging, deb), path.join(staging, 'root')], { timeoutMs: 120_000 });
    mkdirSync(dir, { recursive: true });
    if (!existsSync(path.join(dir, 'root'))) renameSync(path.join(staging, 'root'), path.join(dir, 'root'));
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  const unpacked = find();
  if (!unpacked) throw new Error(`udev ${version} unpacked without bin/udevadm`);
  return unpacked;
}

/** Until `test CONDITION` holds in the guest, every 0.1 s, for at most `seconds`. */
const waitInGuest = (condition: string, seconds: number) =>
  guest.agent.check(`i=0; until ${condition}; do [ $((i += 1)) -lt ${seconds * 10} ] || exit 1; sleep 0.1; done`, { timeoutMs: seconds * 1000 + 10_000 });

/** listUsbDevices() in the guest, through the built module, with each device's offer, key and block devices. */
async function listInGuest(): Promise<Listed[]> {
  const js = [
    `const m = await import(${JSON.stringify(MODULE)});`,
    'const out = m.listUsbDevices().map((d) => { const blocks = m.mountedFilesystemsOf(d);',
    '  return { ...d, offer: m.offerOf(d), key: m.permissionKey(d), blocks, refusal: m.mountRefusal(d, blocks) }; });',
    'console.log(JSON.stringify(out));',
  ].join('\n');
  const t = Date.now();
  const stdout = await guest.agent.check(`node --input-type=module -e '${js}'`, { timeoutMs: 90_000 });
  console.info(`[timing] listUsbDevices in the guest (node cold start included): ${Date.now() - t} ms`);
  return JSON.parse(stdout) as Listed[];
}

function only(devices: Listed[], what: string, match: (d: Listed) => boolean): Listed {
  const found = devices.filter(match);
  if (found.length !== 1) throw new Error(`expected one ${what}, found ${found.length}: ${JSON.stringify(devices.map((d) => [d.busid, d.vendorId, d.productId, d.product]))}`);
  return found[0]!;
}

beforeAll(async () => {
  if (!existsSync(MODULE) || statSync(MODULE).mtimeMs < statSync(SOURCE).mtimeMs) {
    throw new Error(`${MODULE} is missing or older than ${SOURCE}: run npm run build first`);
  }
  dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-usb-enumerate-'));
  image = path.join(dir, 'stick.img');
  await stickImage(image);
  minixKo = await minixModule();
  // The host's root (the guest's) need not have kmod; the harness's static busybox is there.
  busybox = whichProgram(['/bin/busybox', '/usr/bin/busybox']) ?? '';
  if (!busybox) throw new Error('busybox is missing: install busybox-static (scripts/setup.sh tests)');
  guest = await bootGuest({
    name: 'usb-enumerate',
    modules: ['core', 'usb'],
    extraQemuArgs: [
      '-drive', `if=none,id=stick,format=raw,readonly=on,file=${image.replaceAll(',', ',,')}`,
      '-device', 'qemu-xhci,id=xhci',
      '-device', 'usb-hub,bus=xhci.0,port=1',
      '-device', 'usb-mouse,bus=xhci.0,port=1.1',
      '-device', 'usb-kbd,bus=xhci.0,port=2',
      '-device', `usb-storage,bus=xhci.0,port=3,drive=stick,serial=${SERIAL}`,
    ],
  });
  console.info(`[timing] boot (${guest.accel.accel}): agent ready ${guest.timings.agentReadyMs} ms`);
  // The kernel enumerates on its own time: wait for the four devices, configured, and the stick's disk.
  await guest.agent.check(
    'i=0; until [ -e /sys/block/sda ] && [ "$(cat /sys/bus/usb/devices/[0-9]-*[0-9]/bConfigurationValue 2>/dev/null | grep -c .)" -ge 4 ]; do ' +
      '[ $((i += 1)) -lt 300 ] || { ls /sys/bus/usb/devices; exit 1; }; sleep 0.1; done',
    { timeoutMs: 60_000 },
  );
}, SLOW);

afterAll(async () => {
  await guest?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('USB devices in a real guest kernel', () => {
  let devices: Listed[];
  let stick: Listed;

  it('lists each device but the root hubs, with node numbers that follow the kernel minor formula', async () => {
    devices = await listInGuest();
    for (const d of devices) console.info(`[usb] ${d.busid} ${d.vendorId}:${d.productId} "${d.product}" serial "${d.serial}" ${d.removable} ${d.speed} Mb/s: ${d.idSerial}`);
    expect(devices).toHaveLength(4);
    for (const d of devices) {
      // major:minor come from sysfs "dev": the kernel's own, to hold the formula against.
      expect([d.busid, d.major, d.minor]).toEqual([d.busid, 189, usbDeviceMinor(d.busnum, d.devnum)]);
      expect(d.busid).toMatch(new RegExp(`^${d.busnum}-`));
    }
    expect(new Set(devices.map((d) => d.busid)).size).toBe(4);
  }, SLOW);

  it('describes the stick as QEMU makes it, with our serial, and offers it as mass storage', () => {
    stick = only(devices, 'stick', (d) => d.interfaces.some((i) => i.class === '08'));
    expect(stick).toMatchObject({ vendorId: '46f4', productId: '0001', manufacturer: 'QEMU', product: 'QEMU USB HARDDRIVE', serial: SERIAL, deviceClass: '00', configuration: 1 });
    expect(stick.interfaces).toEqual([{ name: `${stick.busid}:1.0`, number: 0, class: '08', subclass: '06', protocol: '50', driver: 'usb-storage' }]);
    // usb_id's rules on QEMU's strings: vendor "QEMU", model "QEMU USB HARDDRIVE" (blanks to "_"), then the serial.
    expect(stick).toMatchObject({ idSerial: `QEMU_QEMU_USB_HARDDRIVE_${SERIAL}`, idSerialFrom: 'computed' });
    expect(stick.key).toBe(`usb:46f4/0001/QEMU_QEMU_USB_HARDDRIVE_${SERIAL}`);
    expect(stick.offer).toEqual({ offered: true, massStorage: true });
    expect(stick.blocks).toEqual([{ name: 'sda', dev: '8:0', mountPoints: [] }]);
    expect(stick.refusal).toBeUndefined();
  });

  it('refuses the hub, as a hub', () => {
    const hub = only(devices, 'hub', (d) => d.deviceClass === '09');
    expect(hub.interfaces.map((i) => [i.class, i.driver])).toEqual([['09', 'hub']]);
    expect(hub.offer).toMatchObject({ offered: false, massStorage: false });
    expect(hub.offer.offered === false && hub.offer.why).toBe(
      `"${hub.product}" (${hub.vendorId}:${hub.productId}) at ${hub.busid} is a USB hub: a hub is never handed to a VM, though the devices plugged into it can be, one at a time`,
    );
    const mouse = only(devices, 'mouse', (d) => d.product === 'QEMU USB Mouse');
    expect(mouse.busid).toBe(`${hub.busid}.1`);
    expect(mouse.interfaces.map((i) => [i.class, i.subclass, i.protocol, i.driver])).toEqual([['03', '01', '02', 'usbhid']]);
    expect(mouse.offer).toMatchObject({ offered: true, warning: expect.stringMatching(/ is a mouse: while the VM has it, this computer loses that mouse$/) });
  });

  it('offers the keyboard, warning that the host loses it', () => {
    const kbd = only(devices, 'keyboard', (d) => d.product === 'QEMU USB Keyboard');
    expect(kbd).toMatchObject({ vendorId: '0627', productId: '0001', manufacturer: 'QEMU' });
    expect(kbd.interfaces.map((i) => [i.class, i.subclass, i.protocol, i.driver])).toEqual([['03', '01', '01', 'usbhid']]);
    // QEMU's serial is dev-hid.c's "68284", the controller's PCI path and the port; ":", "." and "-" are all characters udev keeps.
    expect(kbd.serial).toMatch(new RegExp(`^68284-[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]-${kbd.busid.split('-')[1]}$`));
    expect(kbd.idSerial).toBe(`QEMU_QEMU_USB_Keyboard_${kbd.serial}`);
    expect(kbd.offer).toEqual({ offered: true, massStorage: false, warning: `"QEMU USB Keyboard" (0627:0001) at ${kbd.busid} is a keyboard: while the VM has it, this computer loses that keyboard` });
  });

  it("finds the stick's filesystem once it is mounted, and says where", async () => {
    const sha = createHash('sha256').update(readFileSync(image)).digest('hex');
    expect(await guest.agent.check('sha256sum /dev/sda')).toBe(`${sha}  /dev/sda\n`);
    await guest.agent.check(`${busybox} insmod ${minixKo} && mkdir -p /tmp/stick && mount -t minix -o ro /dev/sda /tmp/stick`);
    try {
      const mounted = only(await listInGuest(), 'stick', (d) => d.busid === stick.busid);
      expect(mounted.blocks).toEqual([{ name: 'sda', dev: '8:0', mountPoints: ['/tmp/stick'] }]);
      expect(mounted.refusal).toBe(
        `"QEMU USB HARDDRIVE" (46f4:0001) at ${stick.busid} has filesystems mounted on this computer (sda at /tmp/stick): unmount it first, so nothing is lost when the VM takes the device`,
      );
    } finally {
      await guest.agent.check('umount /tmp/stick');
    }
  }, SLOW);
});

describe('USB hot-plug in a real guest kernel', () => {
  const EVENTS = '/tmp/usb-events';
  const READY = '/tmp/usb-watch-ready';
  const events = async () =>
    (await guest.agent.check(`cat ${EVENTS} 2>/dev/null || true`)).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { action: string; busid: string });

  it("reports a device plugged in (at its add and its driver's bind) and out, from the kernel's uevents", async () => {
    const udevadm = await unpackedUdevadm();
    const js = [
      `const m = await import(${JSON.stringify(MODULE)}); const fs = await import("node:fs");`,
      `const w = m.watchUsbDevices((e) => fs.appendFileSync("${EVENTS}", JSON.stringify(e) + "\\n"), { udevadm: ${JSON.stringify(udevadm)} });`,
      `await w.ready; fs.writeFileSync("${READY}", "");`,
    ].join('\n');
    const pid = (await guest.agent.check(`setsid node --input-type=module -e '${js}' >/tmp/usb-watch.log 2>&1 </dev/null & echo $!`)).trim();
    try {
      await waitInGuest(`[ -e ${READY} ]`, 60).catch(async (err: Error) => {
        throw new Error(`the watcher did not get ready: ${err.message}\n${await guest.agent.check('cat /tmp/usb-watch.log')}`);
      });
      expect(await events()).toEqual([]);
      const t = Date.now();
      await guest.qmp.execute('device_add', { driver: 'usb-tablet', bus: 'xhci.0', port: '4', id: 'xdpvm-hotplug' });
      await waitInGuest(`[ "$(grep -c '"add"' ${EVENTS} 2>/dev/null)" -ge 2 ]`, 30);
      const plugMs = Date.now() - t;
      const deleted = guest.qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data.device === 'xdpvm-hotplug', { timeoutMs: 30_000 });
      await guest.qmp.execute('device_del', { id: 'xdpvm-hotplug' });
      await deleted;
      await waitInGuest(`grep -q '"remove"' ${EVENTS}`, 30);
      console.info(`[timing] hot-plug: device_add to add+bind seen ${plugMs} ms, unplug to remove seen ${Date.now() - t - plugMs} ms`);
      expect(await events()).toEqual([
        { action: 'add', busid: '1-4' },
        { action: 'add', busid: '1-4' },
        { action: 'remove', busid: '1-4' },
      ]);
    } finally {
      await guest.agent.run(`kill ${pid}`);
    }
  }, SLOW);
});
