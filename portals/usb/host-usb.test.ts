import { EventEmitter } from 'node:events';
import { fstatSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { captureLogger } from '../../test/helpers/log-capture.js';
import type { VmConfig } from '../../src/config/schema.js';
import { configureAudit } from '../../src/host/audit.js';
import type { ConsentAsker, ConsentQuestion } from '../../src/host/consent.js';
import type { VmDevices } from '../../src/host/vm-devices.js';
import type { PolicyRow } from '../../src/policy/model.js';
import type { PolicyDecider } from '../../src/policy/policy.js';
import type { BlockDevice, UsbHostDevice } from '../../src/usb/devices.js';
import type { UsbSpec, VmmKind } from '../../src/vmm/adapter.js';
import { streamPair } from '../../src/usb/stream-pair.js';
import { HostUsb } from './host-usb.js';
import type { UsbEntry, UsbEvent } from './schema.js';

/**
 * HostUsb with its edges faked: the host's devices (as src/usb/devices.ts
 * reads them from sysfs, tested against a real kernel in
 * test/e2e/usb-enumerate.test.ts), the VMs' device layers (a VMM with or
 * without the `usb` capability, recording what it is asked), the policy
 * rows, the consent answer and the privileged helper. What is asserted is
 * who gets asked, what gets attached where, what each guest is told, and
 * what is audited.
 */
function device(over: Partial<UsbHostDevice> & Pick<UsbHostDevice, 'busid' | 'devnum'>): UsbHostDevice {
  return {
    busnum: 1,
    major: 189,
    minor: over.devnum - 1,
    vendorId: '1050',
    productId: '0407',
    bcdDevice: '0543',
    manufacturer: 'Yubico',
    product: 'YubiKey 5 NFC',
    serial: undefined,
    deviceClass: '00',
    configuration: 1,
    interfaces: [{ name: `${over.busid}:1.0`, number: 0, class: '0b', subclass: '00', protocol: '00', driver: undefined }],
    speed: '12',
    removable: 'removable',
    driver: 'usb',
    idSerial: 'Yubico_YubiKey_OTP+FIDO+CCID',
    idSerialFrom: 'udev',
    ...over,
  };
}

const YUBIKEY = device({ busid: '1-2', devnum: 5 });
const KEY = 'usb:1050/0407/Yubico_YubiKey_OTP+FIDO+CCID';
const KEYBOARD = device({ busid: '1-3', devnum: 6, vendorId: '0627', productId: '0001', manufacturer: 'QEMU', product: 'QEMU USB Keyboard', idSerial: 'QEMU_QEMU_USB_Keyboard_42', interfaces: [{ name: '1-3:1.0', number: 0, class: '03', subclass: '01', protocol: '01', driver: 'usbhid' }] });
const HUB = device({ busid: '1-1', devnum: 2, vendorId: '0409', productId: '55aa', product: 'QEMU USB Hub', deviceClass: '09', idSerial: 'QEMU_QEMU_USB_Hub', interfaces: [{ name: '1-1:1.0', number: 0, class: '09', subclass: '00', protocol: '00', driver: 'hub' }] });
const WEBCAM = device({ busid: '1-4', devnum: 3, vendorId: '04f2', productId: 'b6dd', product: 'Integrated Camera', removable: 'fixed', idSerial: 'Chicony_Integrated_Camera' });
const STICK = device({ busid: '1-5', devnum: 7, vendorId: '46f4', productId: '0001', manufacturer: 'QEMU', product: 'QEMU USB HARDDRIVE', idSerial: 'QEMU_QEMU_USB_HARDDRIVE_1', interfaces: [{ name: '1-5:1.0', number: 0, class: '08', subclass: '06', protocol: '50', driver: 'usb-storage' }] });

const vmConfig = (name: string, label: string, transport: VmConfig['transport'] = { type: 'virtio-serial', socket: `/run/${name}.sock` }) =>
  ({ name, label, color: '#3366cc', tags: [], transport }) as unknown as VmConfig;

interface FakeVm {
  attached: UsbSpec[];
  detached: string[];
  told: { event: UsbEvent; device: UsbEntry }[];
  devices: VmDevices & EventEmitter;
  present: Set<string>;
  fdWasOpen: boolean[];
}

function fakeVm(kind: VmmKind | 'none', opts: { failAttach?: string; present?: string[] } = {}): FakeVm {
  const attached: UsbSpec[] = [];
  const detached: string[] = [];
  const present = new Set(opts.present ?? []);
  const fdWasOpen: boolean[] = [];
  const usb = {
    attachUsb: async (spec: UsbSpec) => {
      if (spec.fd !== undefined) fdWasOpen.push(fstatSync(spec.fd).isFile() || fstatSync(spec.fd).isCharacterDevice());
      if (opts.failAttach) throw new Error(opts.failAttach);
      attached.push(spec);
      present.add(spec.id);
      return { kind: 'usb' as const, id: spec.id, deviceId: `xdpvm-usb-${spec.id}`, location: 'xdpvm-xhci.0' };
    },
    detachUsb: async (id: string) => void (detached.push(id), present.delete(id)),
    listUsb: async () => [...present].map((id) => ({ kind: 'usb' as const, id, deviceId: `xdpvm-usb-${id}`, location: 'xdpvm-xhci.0' })),
  };
  const vmm = kind === 'none' ? undefined : { kind, ...(kind === 'cloud-hypervisor' ? {} : { usb }) };
  const devices = Object.assign(new EventEmitter(), {
    vmm,
    require: () => {
      if (!vmm) throw new Error('the host cannot reach this VM\'s VMM (VMM not connected yet)');
      if (kind === 'cloud-hypervisor') throw new Error('cloud-hypervisor cannot attach USB devices: it has no USB emulation');
      return usb;
    },
  }) as unknown as VmDevices & EventEmitter;
  return { attached, detached, told: [], devices, present, fdWasOpen };
}

function setup(opts: { rows?: (PolicyRow & { vm?: string })[]; consent?: boolean | ((q: ConsentQuestion) => boolean); vms?: Record<string, FakeVm>; devices?: UsbHostDevice[]; mounted?: Record<string, BlockDevice[]>; helper?: { refuse?: string } } = {}) {
  const hostDevices = [...(opts.devices ?? [YUBIKEY, KEYBOARD, HUB, WEBCAM, STICK])];
  const rows = opts.rows ?? [];
  const policy = {
    decision: async (_portal: string, arg: string | undefined, vm: { name: string }) => {
      const mine = rows.filter((r) => (r.vm ?? r.subject) === vm.name);
      const row = mine.find((r) => r.arg === arg) ?? mine.find((r) => r.arg === undefined);
      return row ? { verdict: row.verdict, row } : { verdict: 'ask' as const };
    },
  } as unknown as PolicyDecider;
  const asked: ConsentQuestion[] = [];
  const consent: ConsentAsker = async (q) => {
    asked.push(q);
    const allowed = typeof opts.consent === 'function' ? opts.consent(q) : (opts.consent ?? false);
    return { allowed, reason: 'user' };
  };
  const helperCalls: string[] = [];
  const cap = captureLogger();
  configureAudit({ logger: cap.log, file: null });
  let seq = 0;
  const usb = new HostUsb({
    policy,
    consent,
    nextRequestId: () => `r${++seq}`,
    log: captureLogger().log,
    readDevices: () => hostDevices,
    mounted: (d) => opts.mounted?.[d.busid] ?? [],
    ...(opts.helper
      ? {
          helper: async () => ({
            usbOpen: async (busid: string) => {
              helperCalls.push(`usb-open ${busid}`);
              if (opts.helper!.refuse) throw new Error(opts.helper!.refuse);
              return openSync('/dev/null', 'r+');
            },
            usbBind: () => Promise.reject(new Error('not used here')),
            usbExport: () => Promise.reject(new Error('not used here')),
            usbUnbind: async (busid: string) => {
              helperCalls.push(`usb-unbind ${busid}`);
              if (opts.helper!.refuse) throw new Error(opts.helper!.refuse);
            },
            close: () => undefined,
          }),
        }
      : {}),
  });
  const vms = opts.vms ?? { work: fakeVm('qemu'), personal: fakeVm('qemu') };
  const labels: Record<string, string> = { work: 'Work', personal: 'Personal', sandbox: 'Sandbox' };
  for (const [name, v] of Object.entries(vms)) usb.register({ vm: vmConfig(name, labels[name] ?? name), devices: v.devices, notify: (event, device) => (v.told.push({ event, device }), true), guest: () => undefined });
  const audits = () => cap.lines().filter((l) => l.audit === true);
  return { usb, vms, asked, audits, hostDevices, helperCalls };
}

describe('HostUsb: what a VM is offered', () => {
  it('lists what may be handed out, never a hub or a built-in device, and warns about a keyboard', async () => {
    const t = setup();
    const list = await t.usb.list('work');
    expect(list.map((d) => d.id)).toEqual(['b1d5', 'b1d6', 'b1d7']);
    expect(list[0]).toEqual({
      id: 'b1d5',
      key: KEY,
      vendorId: '1050',
      productId: '0407',
      vendor: 'Yubico',
      product: 'YubiKey 5 NFC',
      serial: '',
      deviceClass: '00',
      interfaceClasses: ['0b'],
      state: 'free',
      warning: '',
    });
    expect(list[1]!.warning).toMatch(/is a keyboard: while the VM has it, this computer loses that keyboard/);
    // The host's user sees everything, and why the hub and the camera are never offered.
    const host = await t.usb.hostList();
    expect(host.find((r) => r.id === 'b1d2')!.offer).toMatchObject({ offered: false, why: expect.stringMatching(/is a USB hub/) });
    expect(host.find((r) => r.id === 'b1d3')!.offer).toMatchObject({ offered: false, why: expect.stringMatching(/built into this computer/) });
  });

  it('a deny row for a device hides it from that VM only', async () => {
    const t = setup({ rows: [{ portal: 'Usb', subject: 'work', verdict: 'deny', arg: KEY }] });
    expect((await t.usb.list('work')).map((d) => d.id)).toEqual(['b1d6', 'b1d7']);
    expect((await t.usb.list('personal')).map((d) => d.id)).toEqual(['b1d5', 'b1d6', 'b1d7']);
    // Asking for it by a guessed id gets what a device that is not there gets, word for word, and no question.
    const absent = await t.usb.acquire('work', 'b1d9', 'guest').then(() => 'attached', (e: Error) => e.message);
    const denied = await t.usb.acquire('work', 'b1d5', 'guest').then(() => 'attached', (e: Error) => e.message);
    expect(denied).toBe(absent.replace('b1d9', 'b1d5'));
    expect(denied).toBe('no USB device b1d5 on the host now (unplugged, or replugged with a new id: list the devices again)');
    expect(t.asked).toEqual([]);
    expect(t.vms.work!.attached).toEqual([]);
    expect(t.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'deny', reason: 'policy', asked: { device: 'b1d5', key: KEY, why: 'a row denies this VM the device, so it was told there is none' } });
    // The host's CLI is the user: it is told the truth, and attaches.
    await t.usb.acquire('work', 'b1d5', 'cli');
    expect(t.vms.work!.attached.map((a) => a.id)).toEqual(['b1d5']);
  });

  it('the host resolves a device by id, port, key or unique VID:PID, and says what is ambiguous', async () => {
    const twin = device({ busid: '2-1', devnum: 4, busnum: 2 });
    const t = setup({ devices: [YUBIKEY, twin, KEYBOARD] });
    expect((await t.usb.resolve('b1d6')).id).toBe('b1d6');
    expect((await t.usb.resolve('1-3')).id).toBe('b1d6');
    expect((await t.usb.resolve('0627:0001')).id).toBe('b1d6');
    await expect(t.usb.resolve('1050:0407')).rejects.toThrow(/2 devices are 1050:0407 \(b1d5, b2d4\): name one by its id/);
    await expect(t.usb.resolve(KEY)).rejects.toThrow(/no USB device/);
    await expect(t.usb.resolve('b9d9')).rejects.toThrow(/no USB device "b9d9" on this host; xdp-vm usb list shows them \(b1d5, b2d4, b1d6\)/);
  });
});

describe('HostUsb: acquiring and releasing', () => {
  it('a guest asks: the user is asked in plain words naming the VM and the device; allowed, the VMM attaches it by bus and address', async () => {
    const t = setup({ consent: true });
    expect(await t.usb.acquire('work', 'b1d5', 'guest')).toEqual({ id: 'b1d5', key: KEY });
    expect(t.asked.map((q) => q.summary)).toEqual(["Work wants to use the USB device 'YubiKey 5 NFC' (1050:0407)"]);
    expect(t.asked[0]).toMatchObject({ portal: 'Usb', arg: KEY });
    expect(t.asked[0]!.details).toContainEqual({ label: 'Plugged into', value: 'USB port 1-2 of this computer' });
    expect(t.vms.work!.attached).toEqual([{ id: 'b1d5', vendorId: 0x1050, productId: 0x0407, hostBus: 1, hostAddress: 5 }]);
    expect(t.vms.work!.told.map((x) => [x.event, x.device.id, x.device.state])).toEqual([['attached', 'b1d5', 'here']]);
    expect(t.audits().at(-1)).toMatchObject({ vm: 'work', portal: 'Usb', decision: 'allow', reason: 'user', asked: { device: 'b1d5', key: KEY, busid: '1-2', via: 'guest', attached: true, by: 'address' } });
    // The other VM sees it taken, and not by whom.
    expect((await t.usb.list('personal')).find((d) => d.id === 'b1d5')!.state).toBe('elsewhere');
    expect((await t.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBe('work');
    // Asked again: it is here already.
    await t.usb.acquire('work', 'b1d5', 'guest');
    expect(t.asked).toHaveLength(1);
  });

  it('the user refuses: nothing is attached and the guest is told why', async () => {
    const t = setup({ consent: false });
    await expect(t.usb.acquire('work', 'b1d5', 'guest')).rejects.toMatchObject({ code: 'denied', message: "the user did not allow this VM to use 'YubiKey 5 NFC' (1050:0407)" });
    expect(t.vms.work!.attached).toEqual([]);
    expect(t.vms.work!.told).toEqual([]);
  });

  it('the keyboard question carries the warning that the host loses it', async () => {
    const t = setup({ consent: true });
    await t.usb.acquire('work', 'b1d6', 'guest');
    expect(t.asked[0]!.details![0]).toEqual({ label: 'Warning', value: expect.stringMatching(/this computer loses that keyboard/) });
  });

  it('one VM at a time: a second VM is told it is in use (not by whom), and is never asked about; the host is told which VM', async () => {
    const t = setup({ consent: true });
    await t.usb.acquire('work', 'b1d5', 'guest');
    await expect(t.usb.acquire('personal', 'b1d5', 'guest')).rejects.toMatchObject({ code: 'denied', message: "'YubiKey 5 NFC' (1050:0407) is in use by another VM; it can be had once that VM lets it go" });
    await expect(t.usb.acquire('personal', 'b1d5', 'cli')).rejects.toThrow(/is attached to VM "work"; detach it there first \(xdp-vm usb detach b1d5\)/);
    expect(t.asked).toHaveLength(1);
    expect(t.vms.personal!.attached).toEqual([]);
    expect(t.audits().at(-1)).toMatchObject({ vm: 'personal', decision: 'error', asked: { device: 'b1d5', attached: false } });
  });

  it('two VMs asked at once: the user allows both, one gets it, the other a clear answer', async () => {
    const t = setup({ consent: true });
    const results = await Promise.allSettled([t.usb.acquire('work', 'b1d5', 'guest'), t.usb.acquire('personal', 'b1d5', 'guest')]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    expect((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason.message).toMatch(/was attached to another VM meanwhile/);
    expect(t.asked).toHaveLength(2);
    expect(t.vms.work!.attached.length + t.vms.personal!.attached.length).toBe(1);
  });

  it('a stick with a filesystem mounted on the host is refused before anyone is asked, naming the mount', async () => {
    const t = setup({ consent: true, mounted: { '1-5': [{ name: 'sdb1', dev: '8:17', mountPoints: ['/media/me/STICK'] }] } });
    await expect(t.usb.acquire('work', 'b1d7', 'guest')).rejects.toThrow(/has filesystems mounted on this computer \(sdb1 at \/media\/me\/STICK\): unmount it first/);
    expect(t.asked).toEqual([]);
    expect(t.vms.work!.attached).toEqual([]);
  });

  it('a hub is refused whoever asks, and a VMM without USB is said to be so before anyone is asked', async () => {
    const t = setup({ consent: true, vms: { work: fakeVm('qemu'), sandbox: fakeVm('cloud-hypervisor'), off: fakeVm('none') } });
    await expect(t.usb.acquire('work', 'b1d2', 'cli')).rejects.toThrow(/is a USB hub: a hub is never handed to a VM/);
    await expect(t.usb.acquire('sandbox', 'b1d5', 'guest')).rejects.toThrow(/cloud-hypervisor cannot attach USB devices/);
    await expect(t.usb.acquire('off', 'b1d5', 'guest')).rejects.toThrow(/cannot reach this VM's VMM/);
    await expect(t.usb.acquire('nope', 'b1d5', 'cli')).rejects.toThrow(/no VM named "nope"; configured: work, sandbox, off/);
    await expect(t.usb.acquire('work', 'b9d9', 'guest')).rejects.toMatchObject({ code: 'invalid-params', message: expect.stringMatching(/no USB device b9d9 on the host now/) });
    expect(t.asked).toEqual([]);
  });

  it('the VMM failing to attach is an error with its words, audited, and the device stays free', async () => {
    const t = setup({ consent: true, vms: { work: fakeVm('qemu', { failAttach: 'QEMU could not open the USB device at bus 1, address 5' }) } });
    await expect(t.usb.acquire('work', 'b1d5', 'guest')).rejects.toThrow("could not attach 'YubiKey 5 NFC' (1050:0407): QEMU could not open the USB device at bus 1, address 5");
    expect((await t.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBeUndefined();
    expect(t.audits().at(-1)).toMatchObject({ decision: 'error', reason: 'failure', asked: { attached: false } });
  });

  it('QEMU gets the device node the helper opened, which is closed once attached; a helper that refuses leaves QEMU to open it', async () => {
    const t = setup({ helper: {} });
    await t.usb.acquire('work', 'b1d5', 'cli');
    expect(t.helperCalls).toEqual(['usb-open 1-2']);
    expect(t.vms.work!.fdWasOpen).toEqual([true]);
    const fd = t.vms.work!.attached[0]!.fd!;
    expect(() => fstatSync(fd)).toThrow(/EBADF/);
    expect(t.audits().at(-1)).toMatchObject({ asked: { by: 'descriptor' } });

    const r = setup({ helper: { refuse: 'no rule in /etc/xdp-vm/helper.allow lets alice have 1050:0407' } });
    await r.usb.acquire('work', 'b1d5', 'cli');
    expect(r.vms.work!.attached[0]!.fd).toBeUndefined();
    expect(r.audits().at(-1)).toMatchObject({ asked: { by: 'address' } });
  });

  it('a device a daemon before this one left bound to usbip-host goes back to the host, through the helper; a refusal leaves it as it is', async () => {
    const left = device({ busid: '1-2', devnum: 5, driver: 'usbip-host' });
    const t = setup({ helper: {}, devices: [left, STICK] });
    await t.usb.reclaimExported();
    expect(t.helperCalls).toEqual(['usb-unbind 1-2']);
    const r = setup({ helper: { refuse: '1-2 was bound to usbip-host for uid 1001, not for uid 1000 (alice)' }, devices: [left, STICK] });
    await r.usb.reclaimExported();
    expect(r.helperCalls).toEqual(['usb-unbind 1-2']);
    const none = setup({ devices: [left] });
    await none.usb.reclaimExported();
    expect(none.helperCalls).toEqual([]);
  });

  it('the helper is not asked for libvirt, which opens the node itself', async () => {
    const t = setup({ helper: {}, vms: { work: fakeVm('libvirt') } });
    await t.usb.acquire('work', 'b1d5', 'cli');
    expect(t.helperCalls).toEqual([]);
  });

  it('release detaches, tells the guest, and is audited; releasing what this VM does not have is false', async () => {
    const t = setup({ consent: true });
    await t.usb.acquire('work', 'b1d5', 'guest');
    expect(await t.usb.release('personal', 'b1d5', 'guest')).toBe(false);
    expect(await t.usb.release('work', 'b1d5', 'guest')).toBe(true);
    expect(t.vms.work!.detached).toEqual(['b1d5']);
    expect(t.vms.work!.told.at(-1)).toMatchObject({ event: 'detached', device: { id: 'b1d5', state: 'free' } });
    expect(t.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'revoke', reason: 'user', asked: { device: 'b1d5', detached: true } });
    expect(await t.usb.release(undefined, 'b1d5', 'cli')).toBe(false);
  });
});

describe('HostUsb: persistence and hot-plug', () => {
  const always: PolicyRow = { portal: 'Usb', subject: 'work', verdict: 'allow', arg: KEY };

  it('an "Always" row attaches its device when the guest connects; a VM-wide allow row attaches nothing by itself', async () => {
    const t = setup({ rows: [always] });
    await t.usb.guestConnected('work');
    expect(t.vms.work!.attached.map((s) => s.id)).toEqual(['b1d5']);
    expect(t.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'allow', reason: 'policy', rule: expect.stringContaining(KEY), asked: { via: 'always' } });

    const wide = setup({ rows: [{ portal: 'Usb', subject: 'work', verdict: 'allow' }] });
    await wide.usb.guestConnected('work');
    expect(wide.vms.work!.attached).toEqual([]);
  });

  it('unplugged: its VM loses it (the VMM\'s device goes too) and every VM hears; replugged with a new address: the "Always" row brings it back', async () => {
    const t = setup({ rows: [always] });
    await t.usb.guestConnected('work');
    t.hostDevices.splice(t.hostDevices.indexOf(YUBIKEY), 1);
    await t.usb.onHostChange({ action: 'remove', busid: '1-2' });
    expect(t.vms.work!.detached).toEqual(['b1d5']);
    expect(t.vms.work!.told.map((x) => x.event)).toEqual(['attached', 'detached', 'unplugged']);
    expect(t.vms.personal!.told.map((x) => [x.event, x.device.id])).toEqual([['unplugged', 'b1d5']]);
    expect(t.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'revoke', reason: 'failure', asked: { why: 'the device was unplugged from the host' } });

    const replugged = device({ busid: '1-2', devnum: 9 });
    t.hostDevices.push(replugged);
    await t.usb.onHostChange({ action: 'add', busid: '1-2' });
    expect(t.vms.work!.attached.map((s) => [s.id, s.hostAddress])).toEqual([
      ['b1d5', 5],
      ['b1d9', 9],
    ]);
    expect(t.vms.personal!.told.map((x) => [x.event, x.device.id, x.device.state])).toEqual([
      ['unplugged', 'b1d5', 'free'],
      ['plugged', 'b1d9', 'free'],
    ]);
    // The kernel reports the add again at its driver's bind: nothing happens twice.
    await t.usb.onHostChange({ action: 'add', busid: '1-2' });
    expect(t.vms.work!.attached).toHaveLength(2);
    expect(t.vms.personal!.told).toHaveLength(2);
  });

  it('the VM stopping gives its devices back; the VMM removing one without our asking does too, and the guest hears', async () => {
    const t = setup({ consent: true });
    await t.usb.acquire('work', 'b1d5', 'guest');
    await t.usb.acquire('work', 'b1d6', 'guest');
    t.vms.work!.devices.emit('device-detached', { type: 'device-detached', kind: 'usb', id: 'b1d6', deviceId: 'xdpvm-usb-b1d6', expected: false });
    expect((await t.usb.hostList()).find((r) => r.id === 'b1d6')!.holder).toBeUndefined();
    expect(t.vms.work!.told.at(-1)).toMatchObject({ event: 'detached', device: { id: 'b1d6' } });
    t.vms.work!.devices.emit('gone', 'the VM stopped');
    expect((await t.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBeUndefined();
    expect(t.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'revoke', asked: { device: 'b1d5', why: 'the VM stopped' } });
    // Now the other VM can have it.
    await t.usb.acquire('personal', 'b1d5', 'guest');
    expect(t.vms.personal!.attached.map((s) => s.id)).toEqual(['b1d5']);
  });

  it('a restarted daemon adopts the devices the VM has by our naming, so another VM cannot take them', async () => {
    const work = fakeVm('qemu', { present: ['b1d5', 'b3d3'] });
    const t = setup({ consent: true, vms: { work, personal: fakeVm('qemu') } });
    work.devices.emit('up', work.devices.vmm);
    await new Promise((r) => setTimeout(r, 10));
    expect((await t.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBe('work');
    await expect(t.usb.acquire('personal', 'b1d5', 'guest')).rejects.toThrow(/in use by another VM/);
  });
});

describe('HostUsb: a provider VM\'s devices, by USB/IP', () => {
  /** A VM whose QEMU can hot-plug channels, and whose guest answers the USB/IP requests as its root agent would. */
  function usbipVm(opts: { provider?: boolean; failImport?: string; noChannels?: boolean; provided?: unknown[]; kind?: VmmKind } = {}) {
    const v = fakeVm(opts.kind ?? (opts.noChannels ? 'libvirt' : 'qemu'));
    const opened: { id: string; name: string; socketPath: string }[] = [];
    const closed: string[] = [];
    /** The guest's end of each channel, by channel id: what its root agent would relay to the kernel. */
    const guestEnds = new Map<string, Duplex>();
    const channels = {
      openChannel: async (spec: { id: string; name: string; socketPath: string }) => {
        opened.push(spec);
        const [host, guest] = await streamPair('unix');
        guestEnds.set(spec.id, guest);
        return host;
      },
      closeChannel: async (id: string) => void (closed.push(id), guestEnds.get(id)?.destroy()),
    };
    if (!opts.noChannels) Object.assign((v.devices as unknown as { vmm: object }).vmm, { channels });
    const asked: [string, unknown][] = [];
    const guest = {
      request: async (method: { name: string }, params: unknown) => {
        asked.push([method.name, params]);
        if (method.name === 'usbip.devices') return { devices: opts.provided ?? [] };
        if (method.name === 'usbip.export') return { devid: (1 << 16) | 3, speed: 5 };
        if (method.name === 'usbip.import') {
          if (opts.failImport) throw new Error(opts.failImport);
          return { vhciPort: 15 };
        }
        return {};
      },
    };
    return { ...v, opened, closed, guestEnds, asked, guest, provider: opts.provider ?? false };
  }

  const STICK_IN_VM = {
    busid: '1-1',
    busnum: 1,
    devnum: 3,
    vendorId: '46f4',
    productId: '0001',
    manufacturer: 'QEMU',
    product: 'QEMU USB HARDDRIVE\u202e\u0007',
    serial: 'XDPVM-1',
    deviceClass: '00',
    configuration: 1,
    interfaces: [{ name: '1-1:1.0', number: 0, class: '08', subclass: '06', protocol: '50', driver: 'usb-storage' }],
    speed: '5000',
    removable: 'removable',
    idSerial: 'QEMU_QEMU_USB_HARDDRIVE_XDPVM-1',
  };
  const STICK_KEY = 'usb:46f4/0001/QEMU_QEMU_USB_HARDDRIVE_XDPVM-1';

  /** The host kernel's side through a helper: usb-bind, usb-export (a stream whose other end, usbip-host's, is kept here), usb-unbind. */
  function fakeHelper(refuseBind?: string) {
    const calls: string[] = [];
    const kernelEnds: Duplex[] = [];
    /** What the daemon was handed. */
    const daemonEnds: Duplex[] = [];
    const helper = {
      usbOpen: () => Promise.reject(new Error('not used here')),
      usbBind: async (busid: string) => {
        calls.push(`usb-bind ${busid}`);
        if (refuseBind) throw new Error(refuseBind);
      },
      usbExport: async (busid: string) => {
        calls.push(`usb-export ${busid}`);
        const [kernel, ours] = await streamPair('unix');
        kernelEnds.push(kernel);
        daemonEnds.push(ours);
        return ours;
      },
      usbUnbind: async (busid: string) => {
        calls.push(`usb-unbind ${busid}`);
        for (const k of kernelEnds) k.destroy();
      },
      close: () => undefined,
    };
    return { calls, kernelEnds, daemonEnds, connect: async () => helper };
  }

  function world(opts: { failImport?: string; importerNoChannels?: boolean; importerTransport?: VmConfig['transport']; rows?: PolicyRow[]; importer?: ReturnType<typeof usbipVm>; host?: UsbHostDevice[]; helper?: ReturnType<typeof fakeHelper>; helperProblem?: string } = {}) {
    const provided: unknown[] = [STICK_IN_VM, { ...STICK_IN_VM, busid: '1-2', devnum: 4, idSerial: 'bad/serial' }];
    const sysUsb = usbipVm({ provider: true, provided });
    const work = opts.importer ?? usbipVm({ ...(opts.failImport ? { failImport: opts.failImport } : {}), noChannels: opts.importerNoChannels ?? false });
    const cap = captureLogger();
    configureAudit({ logger: cap.log, file: null });
    const asked: ConsentQuestion[] = [];
    const rows = opts.rows ?? [];
    const usb = new HostUsb({
      policy: {
        decision: async (_p: string, arg: string | undefined, vm: { name: string }) => {
          const row = rows.find((r) => r.subject === vm.name && r.arg === arg);
          return row ? { verdict: row.verdict, row } : { verdict: 'ask' };
        },
      } as unknown as PolicyDecider,
      consent: async (q) => (asked.push(q), { allowed: true, reason: 'user' }),
      nextRequestId: () => 'r',
      log: captureLogger().log,
      readDevices: () => opts.host ?? [],
      runtimeDir: mkdtempSync(path.join(tmpdir(), 'hostusb-')),
      ...(opts.helper ? { helper: opts.helper.connect } : {}),
      ...(opts.helperProblem ? { helperProblem: async () => opts.helperProblem } : {}),
    });
    for (const [name, v] of [
      ['sys-usb', sysUsb],
      ['work', work],
    ] as const) {
      const transport = name === 'work' ? opts.importerTransport : undefined;
      usb.register({ vm: { ...vmConfig(name, name === 'work' ? 'Work' : 'sys-usb', transport), usb: { provider: v.provider } }, devices: v.devices, notify: (event, device) => (v.told.push({ event, device }), true), guest: () => v.guest as never });
    }
    return { usb, sysUsb, work, asked, provided, audits: () => cap.lines().filter((l) => l.audit === true) };
  }

  it('lists a provider\'s devices to the other VMs, never to itself, with its words made showable and bad keys left out', async () => {
    const w = world();
    const list = await w.usb.list('work');
    expect(list.map((d) => [d.id, d.key, d.product])).toEqual([['sys-usb.b1d3', STICK_KEY, 'QEMU USB HARDDRIVE']]);
    expect(await w.usb.list('sys-usb')).toEqual([]);
    expect(w.sysUsb.asked[0]).toEqual(['usbip.devices', {}]);
    // Lists in a burst, from any VM, ask the provider once a second at most.
    await Promise.all([w.usb.list('work'), w.usb.list('work'), w.usb.hostList()]);
    expect(w.sysUsb.asked.filter(([m]) => m === 'usbip.devices')).toHaveLength(1);
  });

  it('attaches by USB/IP: a channel into each VM, relayed both ways; the provider exports, the VM imports; release undoes it all', async () => {
    const w = world();
    expect(await w.usb.acquire('work', 'sys-usb.b1d3', 'guest')).toEqual({ id: 'sys-usb.b1d3', key: STICK_KEY });
    expect(w.asked[0]!.summary).toBe("Work wants to use the USB device 'QEMU USB HARDDRIVE' (46f4:0001)");
    expect(w.asked[0]!.details).toContainEqual({ label: 'Plugged into', value: 'USB port 1-1 of VM "sys-usb", which passes it on through this computer' });
    expect(w.sysUsb.opened.map((c) => [c.id, c.name])).toEqual([['usb-work-b1d3', 'io.github.xdp_vm.usbip.work.b1d3']]);
    expect(w.work.opened.map((c) => [c.id, c.name])).toEqual([['usb-sys-usb-b1d3', 'io.github.xdp_vm.usbip.sys-usb.b1d3']]);
    expect(w.sysUsb.asked.filter(([m]) => m !== 'usbip.devices')).toEqual([['usbip.export', { busid: '1-1', port: 'io.github.xdp_vm.usbip.work.b1d3' }]]);
    expect(w.work.asked).toEqual([['usbip.import', { port: 'io.github.xdp_vm.usbip.sys-usb.b1d3', devid: 65539, speed: 5 }]]);
    // The bytes: what the provider's kernel sends reaches the VM's, and back.
    const provider = w.sysUsb.guestEnds.get('usb-work-b1d3')!;
    const importer = w.work.guestEnds.get('usb-sys-usb-b1d3')!;
    const got = (s: Duplex) => new Promise<string>((resolve) => s.once('data', (d: Buffer) => resolve(d.toString())));
    const atImporter = got(importer);
    provider.write('URB reply');
    expect(await atImporter).toBe('URB reply');
    const atProvider = got(provider);
    importer.write('CMD_SUBMIT');
    expect(await atProvider).toBe('CMD_SUBMIT');
    expect(w.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'allow', asked: { device: 'sys-usb.b1d3', from: 'sys-usb', by: 'usbip', vhciPort: 15 } });
    expect(w.work.told.at(-1)).toMatchObject({ event: 'attached', device: { id: 'sys-usb.b1d3', state: 'here' } });

    expect(await w.usb.release('work', 'sys-usb.b1d3', 'guest')).toBe(true);
    expect(w.work.asked.at(-1)).toEqual(['usbip.unimport', { vhciPort: 15 }]);
    expect(w.sysUsb.asked.at(-1)).toEqual(['usbip.unexport', { busid: '1-1' }]);
    expect(w.work.closed).toEqual(['usb-sys-usb-b1d3']);
    expect(w.sysUsb.closed).toEqual(['usb-work-b1d3']);
  });

  it('an import that fails undoes the export and both channels, and says why', async () => {
    const w = world({ failImport: 'vhci-hcd did not attach fd 12 on port 15: the kernel answered EBUSY' });
    await expect(w.usb.acquire('work', 'sys-usb.b1d3', 'cli')).rejects.toThrow("could not attach 'QEMU USB HARDDRIVE' (46f4:0001): vhci-hcd did not attach fd 12 on port 15: the kernel answered EBUSY");
    expect(w.sysUsb.asked.at(-1)).toEqual(['usbip.unexport', { busid: '1-1' }]);
    expect(w.sysUsb.closed).toEqual(['usb-work-b1d3']);
    expect(w.work.closed).toEqual(['usb-sys-usb-b1d3']);
    expect((await w.usb.hostList()).find((r) => r.id === 'sys-usb.b1d3')!.holder).toBeUndefined();
  });

  it('a VM whose VMM cannot hot-plug a channel is told so before anyone is asked', async () => {
    const w = world({ importerNoChannels: true });
    await expect(w.usb.acquire('work', 'sys-usb.b1d3', 'guest')).rejects.toThrow(/VM "work" \(the VM that asks\) runs on libvirt, which cannot hot-plug the byte channel USB\/IP rides on/);
    expect(w.asked).toEqual([]);
  });

  /**
   * A cloud-hypervisor VM: no channels, its link is hybrid vsock. The
   * VMM's muxer (a Unix socket) is played here as cloud-hypervisor's
   * docs/vsock.md has it: `CONNECT P\n` gets `OK <n>\n` when the guest
   * listens on P, and a hang-up when nothing does. The guest's agent
   * listens only once asked to import.
   */
  async function hybridVsockImporter(kind: VmmKind = 'libvirt', failImport?: string) {
    const dir = mkdtempSync(path.join(tmpdir(), 'hostusb-hv-'));
    const socket = path.join(dir, 'vsock.sock');
    const listening = new Map<number, (s: net.Socket) => void>();
    const dials: number[] = [];
    const muxer = net.createServer((c) => {
      let line = '';
      const onData = (d: Buffer) => {
        line += d.toString('latin1');
        const m = /^CONNECT (\d+)\n/.exec(line);
        if (!m) return;
        c.off('data', onData);
        const port = Number(m[1]);
        dials.push(port);
        const take = listening.get(port);
        if (!take) return void c.destroy();
        listening.delete(port);
        c.write('OK 1073741824\n', () => take(c));
      };
      c.on('data', onData);
    });
    await new Promise<void>((r) => muxer.listen(socket, r));
    const v = usbipVm({ noChannels: true, kind });
    let kernelEnd: net.Socket | undefined;
    v.guest.request = async (method: { name: string }, params: unknown) => {
      v.asked.push([method.name, params]);
      if (method.name !== 'usbip.import') return {};
      if (failImport) throw new Error(failImport);
      const port = (params as { vsockPort: number }).vsockPort;
      // The agent's round trip: it listens a moment after the host asked.
      await new Promise((r) => setTimeout(r, 120));
      kernelEnd = await new Promise<net.Socket>((resolve) => listening.set(port, resolve));
      return { vhciPort: 15 };
    };
    return { v, socket, dials, kernel: () => kernelEnd!, close: () => (muxer.close(), rmSync(dir, { recursive: true, force: true })) };
  }

  it('a VM whose link is hybrid vsock (cloud-hypervisor) gets the device on a reserved vsock port its agent listens on, dialled through the VMM\'s muxer', async () => {
    const hv = await hybridVsockImporter();
    try {
      const w = world({ importer: hv.v, importerTransport: { type: 'hybrid-vsock', socket: hv.socket, port: 5000 } });
      await w.usb.acquire('work', 'sys-usb.b1d3', 'cli');
      const [method, params] = w.work.asked[0]!;
      expect(method).toBe('usbip.import');
      const vsockPort = (params as { vsockPort: number }).vsockPort;
      expect(params).toEqual({ vsockPort, devid: 65539, speed: 5 });
      expect(vsockPort).toBeGreaterThan(0);
      expect(vsockPort).toBeLessThan(1024);
      // Dialled until the agent listened: refused at first, then taken.
      expect(hv.dials.length).toBeGreaterThan(1);
      expect(new Set(hv.dials)).toEqual(new Set([vsockPort]));
      expect(w.work.opened).toEqual([]);
      const provider = w.sysUsb.guestEnds.get('usb-work-b1d3')!;
      const got = (s: Duplex) => new Promise<string>((resolve) => s.once('data', (d: Buffer) => resolve(d.toString())));
      const atImporter = got(hv.kernel());
      provider.write('URB reply');
      expect(await atImporter).toBe('URB reply');
      const atProvider = got(provider);
      hv.kernel().write('CMD_SUBMIT');
      expect(await atProvider).toBe('CMD_SUBMIT');
      expect(w.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'allow', asked: { by: 'usbip', vhciPort: 15 } });

      const gone = new Promise((r) => hv.kernel().once('close', r));
      expect(await w.usb.release('work', 'sys-usb.b1d3', 'cli')).toBe(true);
      expect(w.work.asked.at(-1)).toEqual(['usbip.unimport', { vhciPort: 15 }]);
      await gone;
    } finally {
      hv.close();
    }
  });

  it("a host device goes to a cloud-hypervisor VM by USB/IP from the host kernel: the helper binds it to usbip-host and exports it on a stream the daemon relays to the VM's vsock; release gives it back", async () => {
    const hv = await hybridVsockImporter('cloud-hypervisor');
    const helper = fakeHelper();
    try {
      const w = world({ importer: hv.v, importerTransport: { type: 'hybrid-vsock', socket: hv.socket, port: 5000 }, host: [YUBIKEY], helper });
      expect((await w.usb.list('work')).map((d) => d.id)).toContain('b1d5');
      await w.usb.acquire('work', 'b1d5', 'cli');
      expect(helper.calls).toEqual(['usb-bind 1-2', 'usb-export 1-2']);
      // devid is busnum << 16 | devnum; "12" (Mbit/s) is full speed, usb_device_speed 2.
      expect(w.work.asked[0]).toEqual(['usbip.import', { vsockPort: expect.any(Number), devid: (1 << 16) | 5, speed: 2 }]);
      const got = (s: Duplex) => new Promise<string>((resolve) => s.once('data', (d: Buffer) => resolve(d.toString())));
      const atImporter = got(hv.kernel());
      helper.kernelEnds[0]!.write('URB reply');
      expect(await atImporter).toBe('URB reply');
      const atHost = got(helper.kernelEnds[0]!);
      hv.kernel().write('CMD_SUBMIT');
      expect(await atHost).toBe('CMD_SUBMIT');
      expect(w.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'allow', asked: { device: 'b1d5', from: 'this computer', by: 'usbip', vhciPort: 15 } });
      expect((await w.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBe('work');

      expect(await w.usb.release('work', 'b1d5', 'cli')).toBe(true);
      expect(w.work.asked.at(-1)).toEqual(['usbip.unimport', { vhciPort: 15 }]);
      expect(helper.calls.at(-1)).toBe('usb-unbind 1-2');
      expect((await w.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBeUndefined();

      // Attached again, then the daemon stops: the VM lets it go and the host has it back.
      await w.usb.acquire('work', 'b1d5', 'cli');
      await w.usb.stopUsbip();
      expect(w.work.asked.at(-1)).toEqual(['usbip.unimport', { vhciPort: 15 }]);
      expect(helper.calls.slice(-3)).toEqual(['usb-bind 1-2', 'usb-export 1-2', 'usb-unbind 1-2']);
      expect(w.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'revoke', reason: 'closed', asked: { device: 'b1d5', detached: true, why: 'the host daemon stopped' } });
      expect((await w.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBeUndefined();
    } finally {
      hv.close();
    }
  });

  it('an import that fails gives the host device back to the host and closes the stream usbip-host had', async () => {
    const hv = await hybridVsockImporter('cloud-hypervisor', 'vhci-hcd did not attach fd 21 on port 0: the kernel answered EBUSY');
    const helper = fakeHelper();
    try {
      const w = world({ importer: hv.v, importerTransport: { type: 'hybrid-vsock', socket: hv.socket, port: 5000 }, host: [YUBIKEY], helper });
      await expect(w.usb.acquire('work', 'b1d5', 'cli')).rejects.toThrow("could not attach 'YubiKey 5 NFC' (1050:0407): vhci-hcd did not attach fd 21 on port 0: the kernel answered EBUSY");
      expect(helper.daemonEnds[0]!.destroyed).toBe(true);
      expect(helper.calls).toEqual(['usb-bind 1-2', 'usb-export 1-2', 'usb-unbind 1-2']);
      expect((await w.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBeUndefined();
    } finally {
      hv.close();
    }
  });

  it('a helper that will not bind the device leaves it with the host, and the VM is told the helper\'s words', async () => {
    const hv = await hybridVsockImporter('cloud-hypervisor');
    const helper = fakeHelper('uid 1000 (alice) may not use USB device 1050:0407: no "usb" rule in /etc/xdp-vm/helper.conf names this user or their groups');
    try {
      const w = world({ importer: hv.v, importerTransport: { type: 'hybrid-vsock', socket: hv.socket, port: 5000 }, host: [YUBIKEY], helper });
      await expect(w.usb.acquire('work', 'b1d5', 'cli')).rejects.toThrow("could not attach 'YubiKey 5 NFC' (1050:0407): the privileged helper: uid 1000 (alice) may not use USB device 1050:0407");
      expect(helper.calls).toEqual(['usb-bind 1-2']);
      expect(w.work.asked).toEqual([]);
      expect((await w.usb.hostList()).find((r) => r.id === 'b1d5')!.holder).toBeUndefined();
    } finally {
      hv.close();
    }
  });

  it('a helper the system bus does not have is found out before the user is asked for a host device by USB/IP', async () => {
    const hv = await hybridVsockImporter('cloud-hypervisor');
    const helper = fakeHelper();
    try {
      const w = world({ importer: hv.v, importerTransport: { type: 'hybrid-vsock', socket: hv.socket, port: 5000 }, host: [YUBIKEY], helper, helperProblem: 'the privileged helper is not installed on this host (README: "The privileged helper")' });
      await expect(w.usb.acquire('work', 'b1d5', 'guest')).rejects.toThrow(`'YubiKey 5 NFC' (1050:0407) can reach VM "work" only by USB/IP from this computer, and the privileged helper is not installed on this host`);
      expect(w.asked).toEqual([]);
      expect(helper.calls).toEqual([]);
      expect(w.audits().at(-1)).toMatchObject({ vm: 'work', decision: 'error', asked: { device: 'b1d5', attached: false } });
    } finally {
      hv.close();
    }
  });

  it('a cloud-hypervisor VM with no helper on the host is told it can have no host device, and why', async () => {
    const hv = await hybridVsockImporter('cloud-hypervisor');
    try {
      const w = world({ importer: hv.v, importerTransport: { type: 'hybrid-vsock', socket: hv.socket, port: 5000 }, host: [YUBIKEY] });
      await expect(w.usb.acquire('work', 'b1d5', 'cli')).rejects.toThrow('cloud-hypervisor cannot attach USB devices: it has no USB emulation; nor by USB/IP from this computer, which takes the privileged helper, and this daemon has none');
    } finally {
      hv.close();
    }
  });

  it('a VM with neither channels nor vsock is told that USB/IP needs one or the other', async () => {
    const w = world({ importerNoChannels: true });
    await expect(w.usb.acquire('work', 'sys-usb.b1d3', 'cli')).rejects.toThrow('VM "work" (the VM that asks) runs on libvirt, which cannot hot-plug the byte channel USB/IP rides on, and its link to the host is virtio-serial, not vsock: USB/IP needs one or the other');
  });

  it('the provider stopping takes the device from the VM, which is told; the "Always" row brings it back when the provider is up again', async () => {
    const w = world({ rows: [{ portal: 'Usb', subject: 'work', verdict: 'allow', arg: STICK_KEY }] });
    await w.usb.guestConnected('work');
    expect(w.work.asked.map(([m]) => m)).toEqual(['usbip.import']);
    w.sysUsb.devices.emit('gone', 'the VM stopped');
    await new Promise((r) => setTimeout(r, 20));
    expect(w.work.told.at(-1)).toMatchObject({ event: 'detached', device: { id: 'sys-usb.b1d3' } });
    expect(w.work.asked.at(-1)).toEqual(['usbip.unimport', { vhciPort: 15 }]);
    expect(w.audits().some((l) => (l.asked as { why?: string }).why === 'VM "sys-usb", which the device is plugged into, stopped')).toBe(true);
    await w.usb.guestConnected('sys-usb');
    expect(w.work.asked.filter(([m]) => m === 'usbip.import')).toHaveLength(2);
  });

  it('a device unplugged from the provider leaves the VM that had it; replugged, the "Always" row follows it', async () => {
    const w = world({ rows: [{ portal: 'Usb', subject: 'work', verdict: 'allow', arg: STICK_KEY }] });
    await w.usb.guestConnected('work');
    expect(w.work.asked.map(([m]) => m)).toEqual(['usbip.import']);
    w.provided.splice(0, 1);
    await new Promise((r) => setTimeout(r, 1100));
    await w.usb.refreshProviders();
    await new Promise((r) => setTimeout(r, 20));
    expect(w.work.told.map((x) => [x.event, x.device.id])).toEqual([
      ['attached', 'sys-usb.b1d3'],
      ['detached', 'sys-usb.b1d3'],
      ['unplugged', 'sys-usb.b1d3'],
    ]);
    expect(w.sysUsb.told).toEqual([]);
    expect(w.work.asked.at(-1)).toEqual(['usbip.unimport', { vhciPort: 15 }]);
    expect(w.audits().some((l) => (l.asked as { why?: string }).why === 'the device was unplugged from VM "sys-usb"')).toBe(true);
    w.provided.push({ ...STICK_IN_VM, devnum: 9 });
    await new Promise((r) => setTimeout(r, 1100));
    await w.usb.refreshProviders();
    await new Promise((r) => setTimeout(r, 50));
    expect(w.work.told.at(-2)).toMatchObject({ event: 'plugged', device: { id: 'sys-usb.b1d9' } });
    expect(w.work.told.at(-1)).toMatchObject({ event: 'attached', device: { id: 'sys-usb.b1d9', state: 'here' } });
    expect(w.sysUsb.asked.filter(([m]) => m === 'usbip.export').at(-1)).toEqual(['usbip.export', { busid: '1-1', port: 'io.github.xdp_vm.usbip.work.b1d9' }]);
  });
});
