import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { USB_INTERFACE, USB_PATH } from '../../portals/usb/names.js';
import { Bus, BusCallError, type Vardict } from '../dbus/bus.js';
import { BACKEND_BUS_NAME } from '../guest/backend.js';
import { CONTROL_BUS_NAME } from '../host/control.js';
import { daemonControl, hostOrGuestVerb, table, UsageError, type Verb } from './common.js';

const usage = `Usage, in a VM:      xdp-vm usb list [--json]
                     xdp-vm usb attach DEVICE
                     xdp-vm usb detach DEVICE
       on the host:  xdp-vm usb list [--json]
                     xdp-vm usb attach VM DEVICE
                     xdp-vm usb detach DEVICE

The devices are the host's USB devices. One is attached to one VM at a time,
onto that VM's own USB bus, where its kernel and apps use it as any plugged-in
device. Hubs and devices built into the host are never offered; a storage
device with filesystems mounted on the host is refused until they are
unmounted; a keyboard or mouse is offered with a warning that the host loses it.

DEVICE is the id list shows (b1d5: bus 1, address 5, until it is unplugged),
its port (1-2.3), its key (usb:VID/PID/SERIAL), or VID:PID when only one
device has them.

In a VM, attach asks the host, which asks its user unless a policy row decides
(xdp-vm permissions set VM Usb allow|deny usb:VID/PID/SERIAL on the host);
"Always" attaches it whenever the VM starts and whenever the device is plugged
in. On the host, attach asks nobody: you are the user.

Which side this is: the host when the host daemon's bus name
(${CONTROL_BUS_NAME}) is on this session bus, else a VM, where it asks the
guest backend (${BACKEND_BUS_NAME}, started by D-Bus activation).`;

/** The user may be shown a question on the host, then the device is attached: give both time. */
const ATTACH_MS = 150_000;
/** How long an attached device may take to show up on this VM's USB bus. */
const ENUMERATE_WAIT_MS = 15_000;

type Row = [string, Vardict];
const str = (p: Vardict, k: string) => String(p[k]?.value ?? '');

function explain(err: BusCallError): string {
  if (/UnknownObject|UnknownMethod|UnknownInterface/.test(err.errorName)) return 'the host does not serve USB devices to this VM now (a deny row for them all, an older host, or no host reached yet)';
  if (/ServiceUnknown|NameHasNoOwner|Spawn/.test(err.errorName)) return `neither the host daemon (${CONTROL_BUS_NAME}) nor the guest backend (${BACKEND_BUS_NAME}) is on this session bus: on the host, start the daemon (xdp-vm host); in a VM, run xdp-vm install-guest`;
  return err.message.replace(/^\w+: [\w.]+: /, '');
}

/** `'YubiKey 5 NFC' (1050:0407)`. */
function named(p: Vardict): string {
  const ids = `(${str(p, 'vendor-id')}:${str(p, 'product-id')})`;
  return str(p, 'product') ? `'${str(p, 'product')}' ${ids}` : `a USB device ${ids}`;
}

/** The one listed device DEVICE means, as the host resolves it: id, key, or VID:PID when unique. */
function pick(rows: Row[], device: string): Row {
  const exact = rows.filter(([id, p]) => id === device || str(p, 'key') === device);
  if (exact.length === 1) return exact[0]!;
  const m = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$/.exec(device);
  const byIds = m ? rows.filter(([, p]) => str(p, 'vendor-id') === m[1]!.toLowerCase() && str(p, 'product-id') === m[2]!.toLowerCase()) : [];
  if (byIds.length === 1) return byIds[0]!;
  if (byIds.length > 1) throw new Error(`${byIds.length} devices are ${device} (${byIds.map(([id]) => id).join(', ')}): name one by its id`);
  throw new Error(`the host offers this VM no USB device "${device}"; xdp-vm usb list shows what it offers`);
}

/** This VM's kernel's name for a device with these ids that was not there before, once it appears. */
async function appeared(vendor: string, product: string, before: ReadonlySet<string>): Promise<string | undefined> {
  const deadline = Date.now() + ENUMERATE_WAIT_MS;
  const dir = '/sys/bus/usb/devices';
  for (;;) {
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      /* no USB bus yet: a controller being hot-plugged */
    }
    for (const name of names) {
      if (before.has(name) || name.includes(':')) continue;
      try {
        const v = readFileSync(path.join(dir, name, 'idVendor'), 'utf8').trim();
        const p = readFileSync(path.join(dir, name, 'idProduct'), 'utf8').trim();
        if (v === vendor && p === product) return name;
      } catch {
        /* gone meanwhile, or a root hub */
      }
    }
    if (Date.now() > deadline) return undefined;
    await new Promise((r) => setTimeout(r, 100));
  }
}

function usbNow(): Set<string> {
  try {
    return new Set(readdirSync('/sys/bus/usb/devices'));
  } catch {
    return new Set();
  }
}

async function inGuest(bus: Bus, action: string | undefined, rest: string[], json: boolean): Promise<number> {
  const call = (member: string, signature = '', body: unknown[] = [], timeoutMs?: number) =>
    bus.call({ destination: BACKEND_BUS_NAME, path: USB_PATH, interface: USB_INTERFACE, member, signature, body, ...(timeoutMs ? { timeoutMs } : {}) });
  try {
    if (action === 'attach' || action === 'detach') {
      if (rest.length !== 1) throw new UsageError(`usb ${action} takes DEVICE\n\n${usage}`);
      const [rows] = (await call('EnumerateDevices')) as [Row[]];
      const [id, props] = pick(rows, rest[0]!);
      if (action === 'detach') {
        const [released] = (await call('ReleaseDevice', 's', [id], ATTACH_MS)) as [boolean];
        console.log(released ? `Detached ${named(props)}: it is the host's again.` : `This VM does not have ${named(props)} (${id}).`);
        return 0;
      }
      const before = usbNow();
      const [key] = (await call('AcquireDevice', 's', [id], ATTACH_MS)) as [string];
      const where = await appeared(str(props, 'vendor-id'), str(props, 'product-id'), before);
      console.log(`Attached ${named(props)} (${key}): ${where ? `on this VM's USB bus as ${where}` : 'the host attached it; it has not appeared on this VM\'s USB bus yet'}.`);
      return 0;
    }
    if (action !== 'list' || rest.length) throw new UsageError(usage);
    const [rows] = (await call('EnumerateDevices')) as [Row[]];
    const list = rows.map(([id, p]) => ({ id, key: str(p, 'key'), name: named(p), state: str(p, 'state'), warning: str(p, 'warning') }));
    if (json) console.log(JSON.stringify(list, null, 2));
    else if (!list.length) console.log('The host offers this VM no USB devices now.');
    else console.log(table(list.map((d) => [d.id, d.state === 'here' ? 'this VM' : d.state === 'elsewhere' ? 'another VM' : 'free', d.name, d.warning]), ['ID', 'HELD BY', 'DEVICE', 'NOTE']));
    return 0;
  } catch (err) {
    if (err instanceof BusCallError) throw new Error(`${action ?? 'usb'}: ${explain(err)}`);
    throw err;
  }
}

async function onHost(control: NonNullable<Awaited<ReturnType<typeof daemonControl>>>, action: string | undefined, rest: string[], json: boolean): Promise<number> {
  try {
    if (action === 'attach') {
      if (rest.length !== 2) throw new UsageError(`usb attach takes VM and DEVICE\n\n${usage}`);
      const [id, warning] = (await control.call('AttachUsb', 'ss', rest)) as [string, string];
      console.log(`Attached ${id} to ${rest[0]}.${warning ? ` ${warning}.` : ''}`);
      return 0;
    }
    if (action === 'detach') {
      if (rest.length !== 1) throw new UsageError(`usb detach takes DEVICE (whichever VM has it gives it back)\n\n${usage}`);
      const [vm] = (await control.call('DetachUsb', 's', rest)) as [string];
      console.log(`Detached ${rest[0]} from ${vm}: it is the host's again.`);
      return 0;
    }
    if (action !== 'list' || rest.length) throw new UsageError(usage);
    const [rows] = (await control.call('ListUsbDevices')) as [Row[]];
    const list = rows.map(([id, p]) => ({ id, busid: str(p, 'busid'), key: str(p, 'key'), name: named(p), offered: p.offered?.value === true, note: str(p, 'note'), holder: str(p, 'holder') }));
    if (json) console.log(JSON.stringify(list, null, 2));
    else if (!list.length) console.log('This host has no USB devices now.');
    else console.log(table(list.map((d) => [d.id, d.busid, d.holder || (d.offered ? '-' : 'never'), d.name, d.key, d.note]), ['ID', 'PORT', 'VM', 'DEVICE', 'KEY', 'NOTE']));
    return 0;
  } catch (err) {
    if (err instanceof BusCallError) throw new Error(`${action ?? 'usb'}: ${err.message.replace(/^\w+: [\w.]+: /, '')}`);
    throw err;
  }
}

export const usbVerb: Verb = hostOrGuestVerb('usb', usage, { onHost, inGuest });
