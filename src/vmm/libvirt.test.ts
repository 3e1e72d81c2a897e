import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireProgram } from '../deps.js';
import { ExecError, runProgram } from '../exec.js';
import { domainFilesystems, filesystemXml, parseEventLine, parseXml, shareAlias, xmlAttr, xmlElement } from './libvirt-xml.js';

/**
 * The XML the libvirt adapter builds, checked by libvirt's own RelaxNG schema
 * (xmllint, libxml2-utils; the schema ships with libvirt0), and the `virsh
 * dumpxml` and `virsh event` output it reads. The dumpxml fixture is what
 * libvirt 9.0 printed here for a TCG q35 domain with two hot-plugged shares,
 * plus a 9p share, trimmed; it is itself checked against domain.rng.
 */

const SCHEMAS = '/usr/share/libvirt/schemas';
let dir: string;
let xmllint: string;

beforeAll(() => {
  xmllint = requireProgram('xmllint');
  if (!existsSync(path.join(SCHEMAS, 'domaincommon.rng'))) throw new Error(`libvirt's RelaxNG schemas are missing (${SCHEMAS}); install libvirt-clients`);
  dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-libvirt-xml-'));
  // domaincommon.rng defines <filesystem> but starts nowhere: give it a start so a lone device validates.
  writeFileSync(
    path.join(dir, 'filesystem.rng'),
    `<grammar xmlns="http://relaxng.org/ns/structure/1.0"><include href="${SCHEMAS}/domaincommon.rng"/><start><ref name="filesystem"/></start></grammar>`,
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** xmllint's verdict: '' when valid, else its complaint. */
async function relaxng(schema: string, xml: string): Promise<string> {
  const file = path.join(dir, `doc-${Math.random().toString(36).slice(2)}.xml`);
  writeFileSync(file, xml);
  try {
    await runProgram(xmllint, ['--noout', '--relaxng', schema, file]);
    return '';
  } catch (err) {
    if (err instanceof ExecError) return err.stderr.trim();
    throw err;
  }
}

const validDevice = (xml: string) => relaxng(path.join(dir, 'filesystem.rng'), xml);

const SPEC = { id: 'xdpvm-doc', tag: 'xdp-vm-doc', socketPath: '/run/user/1000/xdp-vm/work-doc.sock', queueSize: 1024 };

describe('device XML for virsh attach-device', () => {
  it('is the filesystem element libvirt documents for an external virtiofsd, and passes its schema', async () => {
    const xml = filesystemXml(SPEC);
    expect(xml).toBe(
      '<filesystem type="mount" accessmode="passthrough"><driver type="virtiofs" queue="1024"/>' +
        '<source socket="/run/user/1000/xdp-vm/work-doc.sock"/><target dir="xdp-vm-doc"/><alias name="ua-xdpvm-fs-xdpvm-doc"/></filesystem>',
    );
    expect(await validDevice(xml)).toBe('');
  });

  it('escapes hostile values so they reach libvirt unchanged and cannot add markup', async () => {
    const socketPath = `/tmp/a b&c<d>"e'f\tg/</source><source dir='/'/>.sock`;
    const xml = filesystemXml({ ...SPEC, socketPath, tag: `t"&<'>` });
    expect(await validDevice(xml)).toBe('');
    const out = await runProgram(xmllint, ['--xpath', 'string(/filesystem/source/@socket)', '-'], { input: xml });
    expect(out.stdout.replace(/\n$/, '')).toBe(socketPath);
    const fs = parseXml(xml).children[0]!;
    expect(fs.children.map((c) => c.name)).toEqual(['driver', 'source', 'target', 'alias']);
    expect(fs.children[1]!.attrs).toEqual({ socket: socketPath });
    expect(fs.children[2]!.attrs).toEqual({ dir: `t"&<'>` });
  });

  it('the schema itself rejects what libvirt would (so the check above means something)', async () => {
    expect(await validDevice(filesystemXml(SPEC).replace(SPEC.socketPath, 'relative.sock'))).toMatch(/fails to validate/);
    expect(await validDevice(filesystemXml(SPEC).replace(SPEC.socketPath, '/a&#10;b.sock'))).toMatch(/fails to validate/);
    expect(await validDevice(xmlElement('filesystem', { type: 'mount' }, [xmlElement('driver', { type: 'virtiofs', queue: 'many' }), xmlElement('source', { socket: '/s' }), xmlElement('target', { dir: 't' })]))).toMatch(/fails to validate/);
    expect(await validDevice(filesystemXml(SPEC).replace('ua-xdpvm-fs-xdpvm-doc', 'ua xdpvm'))).toMatch(/fails to validate/);
  });

  it('refuses socket paths and characters libvirt would reject, before sending them', () => {
    expect(() => filesystemXml({ ...SPEC, socketPath: 'relative.sock' })).toThrow(/must be an absolute path on one line/);
    expect(() => filesystemXml({ ...SPEC, socketPath: '/run/a\nb.sock' })).toThrow(/must be an absolute path on one line/);
    expect(() => xmlAttr('/tmp/a\u0001.sock')).toThrow(/characters XML cannot carry/);
    expect(xmlAttr('a&b')).toBe('a&#38;b');
  });

  it('aliases follow libvirt\'s rule for user aliases', () => {
    expect(shareAlias('xdpvm-doc')).toMatch(/^ua-[a-zA-Z0-9_.-]+$/);
  });
});

const DUMPXML = `<domain type='qemu' id='6'>
  <name>work &amp; play</name>
  <uuid>99d597e4-18f2-4915-8805-d28db87586ba</uuid>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>/var/lib/xdpvm/vmlinux</kernel>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <!-- a comment with <filesystem> in it is not a device -->
    <controller type='pci' index='0' model='pcie-root'>
      <alias name='pcie.0'/>
    </controller>
    <controller type='pci' index='1' model='pcie-root-port'>
      <model name='pcie-root-port'/>
      <target chassis='1' port='0x8'/>
      <alias name='pci.1'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0' multifunction='on'/>
    </controller>
    <controller type='pci' index='3' model='pcie-root-port'>
      <model name='pcie-root-port'/>
      <target chassis='3' port='0xa'/>
      <alias name='pci.3'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <source socket='/tmp/vm/root.sock'/>
      <target dir='hostroot'/>
      <alias name='fs0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </filesystem>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <source socket='/run/user/1000/xdp-vm/work-doc.sock'/>
      <target dir='xdp-vm-doc'/>
      <alias name='ua-xdpvm-fs-xdpvm-doc'/>
      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>
    </filesystem>
    <filesystem type='mount' accessmode='mapped'>
      <source dir='/srv/9p'/>
      <target dir='ninep'/>
      <alias name='fs1'/>
    </filesystem>
    <channel type='unix'>
      <source mode='bind' path='/tmp/vm/agent.sock'/>
      <target type='virtio' name='org.xdpvm.agent' state='connected'/>
      <alias name='channel0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <memballoon model='none'/>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+0:+0</label>
    <imagelabel>+0:+0</imagelabel>
  </seclabel>
</domain>
`;

describe('reading virsh dumpxml', () => {
  it('the fixture is a domain libvirt\'s schema accepts', async () => {
    expect(await relaxng(path.join(SCHEMAS, 'domain.rng'), DUMPXML)).toBe('');
  });

  it('finds the virtiofs devices with their tag, alias and root port, and leaves 9p out', () => {
    expect(domainFilesystems(DUMPXML)).toEqual([
      { tag: 'hostroot', alias: 'fs0', socket: '/tmp/vm/root.sock', location: 'pci.1' },
      { tag: 'xdp-vm-doc', alias: 'ua-xdpvm-fs-xdpvm-doc', socket: '/run/user/1000/xdp-vm/work-doc.sock', location: 'pci.3' },
    ]);
  });

  it('copes with an inactive definition, which has no aliases or addresses', () => {
    const inactive = `<domain type='kvm'><name>x</name><devices><filesystem type='mount'><driver type='virtiofs'/><source socket='/s'/><target dir='t'/></filesystem></devices></domain>`;
    expect(domainFilesystems(inactive)).toEqual([{ tag: 't', socket: '/s' }]);
  });

  it('refuses XML that is not what libvirt prints', () => {
    expect(() => domainFilesystems('<domain><devices><filesystem></devices></domain>')).toThrow(/malformed XML/);
    expect(() => domainFilesystems('<domain><devices>')).toThrow(/never closed/);
    expect(() => domainFilesystems('<domain a=b/>')).toThrow(/malformed XML/);
    expect(() => domainFilesystems('<domain/>')).toThrow(/no <devices>/);
    expect(() => domainFilesystems(`<domain><devices><filesystem><driver type='virtiofs'/><target/></filesystem></devices></domain>`)).toThrow(/unexpected virtiofs <filesystem>/);
  });

  it('decodes character references and entities', () => {
    const node = parseXml(`<a v='&lt;&#65;&#x42;&amp;&quot;&apos;&gt;'/>`).children[0]!;
    expect(node.attrs.v).toBe(`<AB&"'>`);
    expect(() => parseXml(`<a v='&nbsp;'/>`)).toThrow(/unknown XML entity/);
  });
});

describe('reading virsh event lines', () => {
  it('takes the event kind and detail, with or without --timestamp', () => {
    expect(parseEventLine("event 'device-removed' for domain 'work': ua-xdpvm-fs-xdpvm-doc")).toEqual({ kind: 'device-removed', detail: 'ua-xdpvm-fs-xdpvm-doc' });
    expect(parseEventLine("2026-11-22 13:29:42.153+0000: event 'lifecycle' for domain 'work': Stopped Destroyed")).toEqual({ kind: 'lifecycle', detail: 'Stopped Destroyed' });
  });

  it('is not fooled by a domain name that looks like the line format', () => {
    expect(parseEventLine("event 'lifecycle' for domain 'a': b': Stopped Shutdown")).toEqual({ kind: 'lifecycle', detail: 'Stopped Shutdown' });
  });

  it('ignores lines that are not events', () => {
    expect(parseEventLine('')).toBeUndefined();
    expect(parseEventLine("event 'reboot' for domain 'work'")).toBeUndefined();
    expect(parseEventLine('events received: 3')).toBeUndefined();
  });
});
