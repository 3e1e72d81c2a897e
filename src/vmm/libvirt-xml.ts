import { z } from 'zod';
import { VmmError, type NetSpec, type ShareSpec, type UsbSpec } from './adapter.js';
import { checkNetSpec } from './adapter-base.js';
import { isInterfaceName } from '../helper/commands.js';
import { nicDeviceId, shareDeviceId } from './qemu.js';
import { usbDeviceId } from './qemu-usb.js';

/**
 * The XML the libvirt adapter writes (device definitions for `virsh
 * attach-device`) and reads (`virsh dumpxml`), and the lines of `virsh event`.
 * No XML library: what libvirt prints is plain, and building by hand with one
 * escaping function keeps every value we insert accounted for.
 */

/** libvirt only accepts user-chosen aliases that start with `ua-`. */
export const ALIAS_PREFIX = `ua-${shareDeviceId('')}`;

export function shareAlias(id: string): string {
  return `${ALIAS_PREFIX}${id}`;
}

/** NICs follow the QEMU adapter's device naming too: `ua-xdpvm-net-<id>`. */
export const NIC_ALIAS_PREFIX = `ua-${nicDeviceId('')}`;

export function nicAlias(id: string): string {
  return `${NIC_ALIAS_PREFIX}${id}`;
}

/** USB devices too: `ua-xdpvm-usb-<id>`. */
export const USB_ALIAS_PREFIX = `ua-${usbDeviceId('')}`;

export function usbAlias(id: string): string {
  return `${USB_ALIAS_PREFIX}${id}`;
}

// ---- XML out

/** An attribute value for a double-quoted XML attribute; whitespace escaped so attribute normalisation keeps it. */
export function xmlAttr(value: string): string {
  if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/.test(value)) throw new VmmError(`${JSON.stringify(value)} has characters XML cannot carry`);
  return value.replace(/[&<>"'\t\n\r]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** `<name a="v" …/>` or with children; attribute values are escaped here and nowhere else. */
export function xmlElement(name: string, attrs: Record<string, string | number | undefined>, children: readonly string[] = []): string {
  const a = Object.entries(attrs)
    .filter((e): e is [string, string | number] => e[1] !== undefined)
    .map(([k, v]) => ` ${k}="${xmlAttr(String(v))}"`)
    .join('');
  return children.length ? `<${name}${a}>${children.join('')}</${name}>` : `<${name}${a}/>`;
}

/** The `<filesystem>` device for an externally started virtiofsd (libvirt ≥ 8.0: `<source socket>`). */
export function filesystemXml(spec: ShareSpec): string {
  // libvirt's schema wants an absolute path on one line (absFilePath).
  if (!/^\/[^\r\n]*$/.test(spec.socketPath)) throw new VmmError(`virtiofsd socket ${JSON.stringify(spec.socketPath)} must be an absolute path on one line`);
  return xmlElement('filesystem', { type: 'mount', accessmode: 'passthrough' }, [
    xmlElement('driver', { type: 'virtiofs', queue: spec.queueSize ?? 1024 }),
    xmlElement('source', { socket: spec.socketPath }),
    xmlElement('target', { dir: spec.tag }),
    xmlElement('alias', { name: shareAlias(spec.id) }),
  ]);
}

/**
 * The `<interface>` device for a NIC, after checking everything in it.
 * - A tap: `type='ethernet'` with `managed='no'` has libvirt open the
 *   existing tap by name (the privileged helper made it and gave it to this
 *   user) and neither create, reconfigure nor delete it. The backend's `fd` is
 *   not used: libvirt opens its own queue of the tap; the caller still closes it.
 * - The VMM's own user networking: `type='user'` with no `<backend>`, QEMU's
 *   slirp, which libvirt sets up and tears down with the NIC. Without port
 *   forwards: libvirt 9.0 has `<portForward>` only for its passt backend, and
 *   its parser rejects `<backend type='passt'/>` ("Invalid value for attribute
 *   'type' in element 'backend': 'passt'"), so neither passt nor forwards can
 *   be had through it.
 *
 * Stream backends are refused. libvirt 9.0 (Debian 12) has no way to hand
 * QEMU the socket of a passt someone else started: `type='vhostuser'` speaks
 * vhost-user rather than passt's length-prefixed frames, and
 * `type='client'`/`'server'` take an IPv4 address and a TCP port only, while
 * passt listens on a Unix socket.
 */
export function interfaceXml(spec: NetSpec): string {
  checkNetSpec(spec);
  const backend = spec.backend;
  if (backend.type === 'stream') {
    throw new VmmError(
      `NIC ${spec.id}: libvirt cannot connect a NIC to the passt listening on ${backend.socketPath}: ` +
        'libvirt 9.0 has no interface type that takes the Unix socket of a passt already running; ' +
        "use libvirt's own user networking, or give this VM a bridge or vm-only network (a tap) instead",
    );
  }
  const tail = [...(spec.mac === undefined ? [] : [xmlElement('mac', { address: spec.mac })]), xmlElement('model', { type: 'virtio' }), xmlElement('alias', { name: nicAlias(spec.id) })];
  if (backend.type === 'user') {
    if (backend.forwards.length) {
      throw new VmmError(
        `NIC ${spec.id}: libvirt cannot forward host ports to a user-mode NIC: libvirt 9.0 has <portForward> only for its passt backend, which it fails to parse; ` +
          'remove the forwards from this network, or reach the VM over a vm-only network',
      );
    }
    return xmlElement('interface', { type: 'user' }, tail);
  }
  // A Linux interface name (IFNAMSIZ 16 with the NUL) is inside libvirt's deviceName alphabet.
  if (!isInterfaceName(backend.tapName)) {
    throw new VmmError(`NIC ${spec.id}: tap name ${JSON.stringify(backend.tapName)} must be 1 to 15 letters, digits, '_', '.' and '-', not starting with '.' or '-'`);
  }
  return xmlElement('interface', { type: 'ethernet' }, [xmlElement('target', { dev: backend.tapName, managed: 'no' }), ...tail]);
}

/** A USB id as libvirt's formatter writes it, and as its parser (which reads 0x as hex, a leading 0 as octal) reads it back. */
const usbIdText = (id: number) => `0x${id.toString(16).padStart(4, '0')}`;

/**
 * The `<hostdev>` for one host USB device, which libvirt passes through with
 * QEMU's usb-host; the spec has been checked (checkUsbSpec).
 * - The source names both the vendor and product ids and the host address.
 *   Given both, libvirt looks for that device at that address only, and fails
 *   if something else or nothing is there; the ids are its check that the
 *   address still holds the device the user chose, and the address picks the
 *   one instance among identical ones (alone, the ids match every one of them).
 *   Numbers in decimal without leading zeros: libvirt reads a leading 0 as octal.
 * - No `managed`: libvirt uses it for PCI only and ignores it for every other
 *   type (formatdomain, "Host device assignment").
 * - No `startupPolicy`: the default, `mandatory`, fails when the device is
 *   missing "for any reason". `optional`, and `requisite` on anything but a
 *   cold boot (a live attach included), would have libvirt mark a missing
 *   device missing and carry on (virHostdevPrepareUSBDevices), and the user
 *   would be told the device is attached when it is not.
 * - No descriptor: libvirtd opens /dev/bus/usb/BBB/DDD itself and a hostdev has
 *   no way to take one, so `spec.fd` is unused (the caller still closes it).
 */
export function hostdevXml(spec: UsbSpec): string {
  return xmlElement('hostdev', { mode: 'subsystem', type: 'usb' }, [
    xmlElement('source', {}, [
      xmlElement('vendor', { id: usbIdText(spec.vendorId) }),
      xmlElement('product', { id: usbIdText(spec.productId) }),
      xmlElement('address', { bus: spec.hostBus, device: spec.hostAddress }),
    ]),
    xmlElement('alias', { name: usbAlias(spec.id) }),
  ]);
}

// ---- XML in

export interface XmlNode {
  name: string;
  attrs: Record<string, string>;
  children: XmlNode[];
}

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (whole, ref: string) => {
    if (ref.startsWith('#x')) return String.fromCodePoint(parseInt(ref.slice(2), 16));
    if (ref.startsWith('#')) return String.fromCodePoint(parseInt(ref.slice(1), 10));
    const named = ENTITIES[ref];
    if (named === undefined) throw new VmmError(`unknown XML entity ${whole}`);
    return named;
  });
}

/**
 * Elements and attributes of the XML libvirt prints (text content is dropped:
 * nothing we read lives there). Enough for `virsh dumpxml`, strict about nesting.
 */
export function parseXml(text: string): XmlNode {
  const root: XmlNode = { name: '#document', attrs: {}, children: [] };
  const stack = [root];
  const tag = /<(\/?)([A-Za-z_][\w.:-]*)((?:\s+[\w.:-]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>|<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<!\[CDATA\[[\s\S]*?\]\]>|<!DOCTYPE[^>]*>|</g;
  for (const m of text.matchAll(tag)) {
    const [whole, closing, name, attrText, selfClosing] = m;
    if (whole === '<') throw new VmmError(`malformed XML at offset ${m.index}`);
    if (name === undefined) continue;
    const top = stack[stack.length - 1]!;
    if (closing) {
      if (top.name !== name || stack.length === 1) throw new VmmError(`malformed XML: </${name}> closes <${top.name}>`);
      stack.pop();
      continue;
    }
    const node: XmlNode = { name, attrs: {}, children: [] };
    for (const a of (attrText ?? '').matchAll(/([\w.:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) node.attrs[a[1]!] = decodeEntities(a[2] ?? a[3] ?? '');
    top.children.push(node);
    if (!selfClosing) stack.push(node);
  }
  if (stack.length !== 1) throw new VmmError(`malformed XML: <${stack[stack.length - 1]!.name}> is never closed`);
  return root;
}

const child = (node: XmlNode | undefined, name: string) => node?.children.find((c) => c.name === name);

/** One virtiofs `<filesystem>` of a domain, as read from `virsh dumpxml`. */
export const DomainFilesystem = z.object({
  tag: z.string().min(1),
  alias: z.string().min(1).optional(),
  socket: z.string().optional(),
  /** The alias of the PCI controller it sits on, e.g. `pci.3`. */
  location: z.string().optional(),
});
export type DomainFilesystem = z.infer<typeof DomainFilesystem>;

/**
 * A domain's `<devices>`, and where a device in it sits: on a PCI bus, the
 * alias of its controller (`pci.3`), as for every device type; on a USB bus,
 * its controller's alias and port (`usb port 1`).
 */
function domainDevices(xml: string): { devices: XmlNode; locationOf: (device: XmlNode) => string | undefined } {
  const domain = child(parseXml(xml), 'domain');
  const devices = child(domain, 'devices');
  if (!devices) throw new VmmError('the domain XML has no <devices>');
  const controllers = (type: string) =>
    new Map(
      devices.children
        .filter((c) => c.name === 'controller' && c.attrs.type === type && c.attrs.index !== undefined)
        .map((c) => [Number(c.attrs.index), child(c, 'alias')?.attrs.name]),
    );
  const buses = { pci: controllers('pci'), usb: controllers('usb') };
  const locationOf = (device: XmlNode) => {
    const address = child(device, 'address');
    const type = address?.attrs.type;
    if ((type !== 'pci' && type !== 'usb') || address?.attrs.bus === undefined) return undefined;
    const bus = Number(address.attrs.bus);
    const controller = buses[type].get(bus) ?? `${type} bus ${bus}`;
    return type === 'usb' && address.attrs.port !== undefined ? `${controller} port ${address.attrs.port}` : controller;
  };
  return { devices, locationOf };
}

/** The virtiofs devices in a domain's XML; 9p and other filesystems are left out. */
export function domainFilesystems(xml: string): DomainFilesystem[] {
  const { devices, locationOf } = domainDevices(xml);
  return devices.children
    .filter((c) => c.name === 'filesystem' && child(c, 'driver')?.attrs.type === 'virtiofs')
    .map((fs) => {
      const parsed = DomainFilesystem.safeParse({
        tag: child(fs, 'target')?.attrs.dir,
        alias: child(fs, 'alias')?.attrs.name,
        socket: child(fs, 'source')?.attrs.socket,
        location: locationOf(fs),
      });
      if (!parsed.success) throw new VmmError(`unexpected virtiofs <filesystem> in the domain XML: ${parsed.error.message}`);
      return parsed.data;
    });
}

/** One `<interface>` of a domain, as read from `virsh dumpxml`. */
export const DomainInterface = z.object({
  /** libvirt's interface type: `ethernet` for ours, `network`, `bridge`, `user`, … */
  type: z.string().min(1),
  alias: z.string().min(1).optional(),
  mac: z.string().optional(),
  /** The host side (tap) when libvirt names one. */
  tap: z.string().optional(),
  location: z.string().optional(),
});
export type DomainInterface = z.infer<typeof DomainInterface>;

/** Every NIC in a domain's XML, whatever its type. */
export function domainInterfaces(xml: string): DomainInterface[] {
  const { devices, locationOf } = domainDevices(xml);
  return devices.children
    .filter((c) => c.name === 'interface')
    .map((nic) => {
      const parsed = DomainInterface.safeParse({
        type: nic.attrs.type,
        alias: child(nic, 'alias')?.attrs.name,
        mac: child(nic, 'mac')?.attrs.address,
        tap: child(nic, 'target')?.attrs.dev,
        location: locationOf(nic),
      });
      if (!parsed.success) throw new VmmError(`unexpected <interface> in the domain XML: ${parsed.error.message}`);
      return parsed.data;
    });
}

/** One USB `<hostdev>` of a domain, as read from `virsh dumpxml`; the source may name the ids, the address, or both. */
export const DomainUsbHostdev = z.object({
  alias: z.string().min(1).optional(),
  vendorId: z.number().int().min(0).max(0xffff).optional(),
  productId: z.number().int().min(0).max(0xffff).optional(),
  hostBus: z.number().int().min(0).optional(),
  hostAddress: z.number().int().min(0).optional(),
  /** Its controller and port in the guest, e.g. `usb port 1`. */
  location: z.string().optional(),
});
export type DomainUsbHostdev = z.infer<typeof DomainUsbHostdev>;

/** A number as libvirt reads one in a USB source (formatdomain): 0x hex, leading-0 octal, else decimal; NaN when it is none. */
function libvirtUint(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const m = /^(?:0[xX]([0-9a-fA-F]+)|0([0-7]*)|([1-9][0-9]*))$/.exec(text.trim());
  if (!m) return NaN;
  return m[1] !== undefined ? parseInt(m[1], 16) : m[2] !== undefined ? parseInt(m[2] || '0', 8) : parseInt(m[3]!, 10);
}

/** The host USB devices passed through to a domain (`<hostdev type='usb'>`), ours and any others; PCI and SCSI hostdevs and redirected USB are left out. */
export function domainUsbHostdevs(xml: string): DomainUsbHostdev[] {
  const { devices, locationOf } = domainDevices(xml);
  return devices.children
    .filter((c) => c.name === 'hostdev' && c.attrs.type === 'usb' && (c.attrs.mode ?? 'subsystem') === 'subsystem')
    .map((hostdev) => {
      const source = child(hostdev, 'source');
      const address = child(source, 'address');
      const parsed = DomainUsbHostdev.safeParse({
        alias: child(hostdev, 'alias')?.attrs.name,
        vendorId: libvirtUint(child(source, 'vendor')?.attrs.id),
        productId: libvirtUint(child(source, 'product')?.attrs.id),
        hostBus: libvirtUint(address?.attrs.bus),
        hostAddress: libvirtUint(address?.attrs.device),
        location: locationOf(hostdev),
      });
      if (!parsed.success) throw new VmmError(`unexpected USB <hostdev> in the domain XML: ${parsed.error.message}`);
      return parsed.data;
    });
}

/**
 * Whether the domain has a USB bus to plug a device into: a USB controller
 * that is not `model='none'`, which is how a domain has USB turned off. A
 * domain XML with no USB controller at all has no bus either.
 */
export function domainHasUsbBus(xml: string): boolean {
  return domainDevices(xml).devices.children.some((c) => c.name === 'controller' && c.attrs.type === 'usb' && c.attrs.model !== 'none');
}

/** Whether any device in the domain's XML has `alias`. */
export function hasAlias(xml: string, alias: string): boolean {
  return domainDevices(xml).devices.children.some((c) => child(c, 'alias')?.attrs.name === alias);
}

// ---- virsh event

export const DomainEvent = z.object({ kind: z.string().min(1), detail: z.string() });
export type DomainEvent = z.infer<typeof DomainEvent>;

/** `[timestamp: ]event 'device-removed' for domain 'vm': ua-x` → {kind, detail}; undefined for other lines. */
export function parseEventLine(line: string): DomainEvent | undefined {
  const m = /^(?:.*?: )?event '([a-z-]+)' for domain '/.exec(line);
  // The domain name may hold anything; the detail starts after the last "': ".
  const cut = line.lastIndexOf("': ");
  if (!m || cut < m[0].length) return undefined;
  return DomainEvent.parse({ kind: m[1], detail: line.slice(cut + 3).trim() });
}
