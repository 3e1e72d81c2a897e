import { z } from 'zod';
import { VmmError, type ShareSpec } from './adapter.js';
import { shareDeviceId } from './qemu.js';

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

/** The virtiofs devices in a domain's XML; 9p and other filesystems are left out. */
export function domainFilesystems(xml: string): DomainFilesystem[] {
  const domain = child(parseXml(xml), 'domain');
  const devices = child(domain, 'devices');
  if (!devices) throw new VmmError('the domain XML has no <devices>');
  const controllers = new Map(
    devices.children
      .filter((c) => c.name === 'controller' && c.attrs.type === 'pci' && c.attrs.index !== undefined)
      .map((c) => [Number(c.attrs.index), child(c, 'alias')?.attrs.name]),
  );
  return devices.children
    .filter((c) => c.name === 'filesystem' && child(c, 'driver')?.attrs.type === 'virtiofs')
    .map((fs) => {
      const address = child(fs, 'address');
      const bus = address?.attrs.type === 'pci' && address.attrs.bus !== undefined ? Number(address.attrs.bus) : undefined;
      const parsed = DomainFilesystem.safeParse({
        tag: child(fs, 'target')?.attrs.dir,
        alias: child(fs, 'alias')?.attrs.name,
        socket: child(fs, 'source')?.attrs.socket,
        location: bus === undefined ? undefined : (controllers.get(bus) ?? `pci bus ${bus}`),
      });
      if (!parsed.success) throw new VmmError(`unexpected virtiofs <filesystem> in the domain XML: ${parsed.error.message}`);
      return parsed.data;
    });
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
