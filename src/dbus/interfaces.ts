import { readFileSync } from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../paths.js';

/**
 * D-Bus interfaces are defined by the XML in `dbus-interfaces/`, the contract
 * with the stock portal frontend and with our own CLI. The exporter answers
 * calls and Introspect from these definitions, never from hand-written
 * signatures scattered through the code.
 */
export interface ArgDef {
  name: string;
  type: string;
  direction: 'in' | 'out';
}

export interface MethodDef {
  name: string;
  args: ArgDef[];
  inSignature: string;
  outSignature: string;
}

export interface PropertyDef {
  name: string;
  type: string;
  access: 'read' | 'write' | 'readwrite';
}

export interface SignalDef {
  name: string;
  signature: string;
  args: { name: string; type: string }[];
}

export interface InterfaceDef {
  name: string;
  methods: Map<string, MethodDef>;
  properties: Map<string, PropertyDef>;
  signals: Map<string, SignalDef>;
}

const attr = (tag: string, name: string): string | undefined => new RegExp(`\\b${name}\\s*=\\s*["']([^"']*)["']`).exec(tag)?.[1];

/** Parse the subset of introspection XML that interface files use. */
export function parseInterfaces(xml: string): InterfaceDef[] {
  const text = xml.replace(/<!--[\s\S]*?-->/g, '');
  const out: InterfaceDef[] = [];
  for (const m of text.matchAll(/<interface\b([^>]*)>([\s\S]*?)<\/interface>/g)) {
    const name = attr(m[1]!, 'name');
    if (!name) throw new Error('interface without a name');
    const iface: InterfaceDef = { name, methods: new Map(), properties: new Map(), signals: new Map() };
    const body = m[2]!;
    for (const mm of body.matchAll(/<method\b([^>]*?)(\/>|>([\s\S]*?)<\/method>)/g)) {
      const args = [...(mm[3] ?? '').matchAll(/<arg\b([^>]*)\/?>/g)].map((a, i): ArgDef => ({
        name: attr(a[1]!, 'name') ?? `arg_${i}`,
        type: attr(a[1]!, 'type') ?? '',
        direction: attr(a[1]!, 'direction') === 'out' ? 'out' : 'in',
      }));
      const method: MethodDef = {
        name: attr(mm[1]!, 'name')!,
        args,
        inSignature: args.filter((a) => a.direction === 'in').map((a) => a.type).join(''),
        outSignature: args.filter((a) => a.direction === 'out').map((a) => a.type).join(''),
      };
      iface.methods.set(method.name, method);
    }
    for (const pm of body.matchAll(/<property\b([^>]*)\/?>/g)) {
      const p: PropertyDef = {
        name: attr(pm[1]!, 'name')!,
        type: attr(pm[1]!, 'type')!,
        access: (attr(pm[1]!, 'access') ?? 'read') as PropertyDef['access'],
      };
      iface.properties.set(p.name, p);
    }
    for (const sm of body.matchAll(/<signal\b([^>]*?)(\/>|>([\s\S]*?)<\/signal>)/g)) {
      const args = [...(sm[3] ?? '').matchAll(/<arg\b([^>]*)\/?>/g)].map((a, i) => ({
        name: attr(a[1]!, 'name') ?? `arg_${i}`,
        type: attr(a[1]!, 'type') ?? '',
      }));
      const s: SignalDef = { name: attr(sm[1]!, 'name')!, args, signature: args.map((a) => a.type).join('') };
      iface.signals.set(s.name, s);
    }
    out.push(iface);
  }
  return out;
}

const cache = new Map<string, InterfaceDef>();

/** Load `dbus-interfaces/<name>.xml` from the package. */
export function loadInterface(name: string): InterfaceDef {
  let def = cache.get(name);
  if (!def) {
    const file = path.join(packageRoot(), 'dbus-interfaces', `${name}.xml`);
    def = parseInterfaces(readFileSync(file, 'utf8')).find((i) => i.name === name);
    if (!def) throw new Error(`${file} does not define ${name}`);
    cache.set(name, def);
  }
  return def;
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Introspection XML for one object: its interfaces plus child node names. */
export function introspectionXml(ifaces: readonly InterfaceDef[], children: readonly string[]): string {
  const lines = ['<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"', ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">', '<node>'];
  lines.push('  <interface name="org.freedesktop.DBus.Introspectable"><method name="Introspect"><arg name="xml" type="s" direction="out"/></method></interface>');
  lines.push('  <interface name="org.freedesktop.DBus.Peer"><method name="Ping"/></interface>');
  for (const i of ifaces) {
    lines.push(`  <interface name="${escapeXml(i.name)}">`);
    for (const m of i.methods.values()) {
      lines.push(`    <method name="${m.name}">`);
      for (const a of m.args) lines.push(`      <arg name="${escapeXml(a.name)}" type="${a.type}" direction="${a.direction}"/>`);
      lines.push('    </method>');
    }
    for (const s of i.signals.values()) {
      lines.push(`    <signal name="${s.name}">`);
      for (const a of s.args) lines.push(`      <arg name="${escapeXml(a.name)}" type="${a.type}"/>`);
      lines.push('    </signal>');
    }
    for (const p of i.properties.values()) lines.push(`    <property name="${p.name}" type="${p.type}" access="${p.access}"/>`);
    lines.push('  </interface>');
  }
  for (const c of children) lines.push(`  <node name="${escapeXml(c)}"/>`);
  lines.push('</node>');
  return lines.join('\n');
}
