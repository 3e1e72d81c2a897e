import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Bus, type Vardict } from '../src/dbus/bus.js';
import { whichProgram } from '../src/deps.js';
import { CONTROL_BUS_NAME, CONTROL_INTERFACE, CONTROL_PATH } from '../src/host/control.js';
import { bootPortalVm, type PortalVm } from '../src/testbed/qemu/portal-vm.js';
import { patternImage, usbipModules } from '../src/testbed/usbip-kit.js';
import { World } from '../src/testbed/world.js';
import { summarize, type Summary } from './stats.js';

/**
 * USB figures with two QEMU guests (TCG here), as test/e2e/usb-usbip does:
 * VM sys-usb (the provider) has a USB stick of QEMU's, VM work gets it by
 * USB/IP through the daemon.
 *  - attach latency: the host's AttachUsb (the answer, where a guest's
 *    acquire would have had its consent) → the stick's disk present in work,
 *    next to the guest agent's own round trip (what the guest-side wait adds);
 *  - sequential read of the whole stick in work, through USB/IP, next to the
 *    same stick read inside sys-usb, on its own controller. Each read is
 *    O_DIRECT, so neither guest's page cache answers.
 */
export interface UsbBench {
  attachToDisk: Summary;
  agentRoundTrip: Summary;
  /** MiB/s per whole-stick read. */
  readUsbip: Summary;
  readNative: Summary;
  stickMiB: number;
}

const SERIAL = 'XDPVM-USBIP-BENCH';
const KEY = `usb:46f4/0001/QEMU_QEMU_USB_HARDDRIVE_${SERIAL}`;
const STICK_MIB = 32;

/** The disk in `vm` under vhci-hcd (imported), or on the xHCI (its own), polling every 10 ms. */
const waitForDisk = (vm: PortalVm, under: 'vhci_hcd' | 'xhci', present = true) =>
  vm.sh(
    `while :; do found=; for b in /sys/block/sd*; do [ -e "$b" ] && readlink -f "$b" | grep -q ${under === 'vhci_hcd' ? '/vhci_hcd' : '/0000:00:'} && { found=\${b##*/}; break; }; done; [ ${present ? '-n' : '-z'} "$found" ] && { echo "$found"; exit 0; }; sleep 0.01; done`,
    120_000,
  );

/** MiB/s of one O_DIRECT read of the whole disk, timed in the guest. */
async function readMiBps(vm: PortalVm, disk: string): Promise<number> {
  const out = await vm.sh(`t0=$(date +%s%N); dd if=/dev/${disk} of=/dev/null bs=1M iflag=direct status=none; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 ))`, 300_000);
  const us = Number(out.trim().split('\n').at(-1));
  if (!(us > 0)) throw new Error(`no time for the read of /dev/${disk}: ${out}`);
  return STICK_MIB / (us / 1e6);
}

export async function benchUsb(opts: { attaches: number; reads: number }): Promise<UsbBench> {
  const scratch = mkdtempSync(path.join(tmpdir(), 'xdp-vm-bench-usb-'));
  let world: World | undefined;
  const vms: PortalVm[] = [];
  try {
    world = await World.start(
      [
        { name: 'sys-usb', qemu: true, usb: { provider: true } },
        { name: 'work', qemu: true },
      ],
      { daemonEnv: { DBUS_SYSTEM_BUS_ADDRESS: 'unix:path=/nonexistent/system_bus_socket' } },
    );
    const image = patternImage(path.join(scratch, 'stick.img'), `${SERIAL} KNOWN BYTES`, STICK_MIB * 1024 * 1024, 1024 * 1024 + 7);
    world.own(scratch);
    const busybox = whichProgram(['/bin/busybox', '/usr/bin/busybox']);
    if (!busybox) throw new Error('busybox is missing: install busybox-static (scripts/setup.sh tests)');
    const insmod = (await usbipModules()).map((m) => `${busybox} insmod ${m}`).join(' && ');
    const sysUsb = await bootPortalVm(world, 'sys-usb', {
      prepare: insmod,
      extraQemuArgs: ['-device', 'qemu-xhci,id=xhci', '-drive', `if=none,id=stick,format=raw,readonly=on,file=${image.file.replaceAll(',', ',,')}`, '-device', `usb-storage,bus=xhci.0,drive=stick,serial=${SERIAL}`],
    });
    vms.push(sysUsb);
    const work = await bootPortalVm(world, 'work', { prepare: insmod });
    vms.push(work);
    // The guest backends start by D-Bus activation; the host needs both connected.
    for (const g of vms) await g.sh('for i in $(seq 60); do dbus-send --session --print-reply --dest=org.freedesktop.impl.portal.desktop.vm /org/freedesktop/portal/desktop org.freedesktop.DBus.Peer.Ping >/dev/null && exit 0; sleep 2; done; exit 1', 330_000);
    const bus = await Bus.connect(world.hostBus.address);
    const control = (member: string, signature: string, body: unknown[]) => bus.call({ destination: CONTROL_BUS_NAME, path: CONTROL_PATH, interface: CONTROL_INTERFACE, member, signature, body, timeoutMs: 120_000 });
    try {
      const stickId = async () => {
        for (let i = 0; i < 60; i++) {
          const [rows] = (await control('ListUsbDevices', '', [])) as [[string, Vardict][]];
          const found = rows.find(([, p]) => p.key?.value === KEY);
          if (found) return found[0];
          await new Promise((r) => setTimeout(r, 1000));
        }
        throw new Error('sys-usb never offered its stick');
      };
      const native = await waitForDisk(sysUsb, 'xhci');
      const readNative: number[] = [];
      for (let i = 0; i < opts.reads; i++) readNative.push(await readMiBps(sysUsb, native.trim()));

      const attaches: number[] = [];
      const agent: number[] = [];
      const readUsbip: number[] = [];
      for (let i = -1; i < opts.attaches; i++) {
        const id = await stickId();
        const seen = waitForDisk(work, 'vhci_hcd');
        // Let the guest's wait start before the clock does.
        await new Promise((r) => setTimeout(r, 200));
        const t0 = performance.now();
        await control('AttachUsb', 'ss', ['work', id]);
        const disk = (await seen).trim();
        const attached = performance.now() - t0;
        const t1 = performance.now();
        await waitForDisk(work, 'vhci_hcd');
        const round = performance.now() - t1;
        // The first is a warm-up; the reads come with the last one.
        if (i >= 0) attaches.push(attached), agent.push(round);
        if (i === opts.attaches - 1) for (let r = 0; r < opts.reads; r++) readUsbip.push(await readMiBps(work, disk));
        await control('DetachUsb', 's', [id]);
        await waitForDisk(work, 'vhci_hcd', false);
        await waitForDisk(sysUsb, 'xhci');
      }
      return { attachToDisk: summarize(attaches), agentRoundTrip: summarize(agent), readUsbip: summarize(readUsbip), readNative: summarize(readNative), stickMiB: STICK_MIB };
    } finally {
      bus.close();
    }
  } finally {
    for (const g of vms) await g.guest.cleanup().catch(() => undefined);
    await world?.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
}
