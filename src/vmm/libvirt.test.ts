import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireProgram } from '../deps.js';
import { ExecError, runProgram } from '../exec.js';
import { VmmError, type NetSpec, type VmmEvent } from './adapter.js';
import { LibvirtAdapter } from './libvirt.js';
import { domainFilesystems, domainInterfaces, filesystemXml, interfaceXml, nicAlias, parseEventLine, parseXml, shareAlias, xmlAttr, xmlElement } from './libvirt-xml.js';

/**
 * The XML the libvirt adapter builds, checked by libvirt's own RelaxNG schema
 * (xmllint, libxml2-utils; the schema ships with libvirt0), and the `virsh
 * dumpxml` and `virsh event` output it reads. The dumpxml fixture is what
 * libvirt 9.0 printed here for a TCG q35 domain with two hot-plugged shares
 * and a hot-plugged NIC on a tap, plus a 9p share and a NIC on a libvirt
 * network, trimmed; it is itself checked against domain.rng. The adapter's NIC
 * calls run against a stand-in virsh that serves that XML.
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
  writeFileSync(
    path.join(dir, 'interface.rng'),
    `<grammar xmlns="http://relaxng.org/ns/structure/1.0"><include href="${SCHEMAS}/domaincommon.rng"/><start><ref name="interface"/></start></grammar>`,
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
const validInterface = (xml: string) => relaxng(path.join(dir, 'interface.rng'), xml);

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

const NIC: NetSpec = { id: 'lan', backend: { type: 'tap', tapName: 'xdpvm7', fd: 42 }, mac: '02:5a:4c:56:00:01' };

describe('interface XML for virsh attach-device', () => {
  it('is an ethernet interface on the existing tap (managed=no), with our MAC and alias, and passes the schema', async () => {
    const xml = interfaceXml(NIC);
    expect(xml).toBe(
      '<interface type="ethernet"><target dev="xdpvm7" managed="no"/><mac address="02:5a:4c:56:00:01"/>' +
        '<model type="virtio"/><alias name="ua-xdpvm-net-lan"/></interface>',
    );
    expect(await validInterface(xml)).toBe('');
    // No MAC: libvirt picks one.
    const noMac = interfaceXml({ id: 'lan', backend: { type: 'tap', tapName: 'xdpvm7' } });
    expect(noMac).not.toContain('<mac');
    expect(await validInterface(noMac)).toBe('');
  });

  it('the schema itself rejects what libvirt would (so the check above means something)', async () => {
    const xml = interfaceXml(NIC);
    expect(await validInterface(xml.replace('02:5a:4c:56:00:01', '03:5a:4c:56:00:01'))).toMatch(/fails to validate/);
    expect(await validInterface(xml.replace('dev="xdpvm7"', 'dev="xdp vm7"'))).toMatch(/fails to validate/);
    expect(await validInterface(xml.replace('managed="no"', 'managed="maybe"'))).toMatch(/fails to validate/);
    expect(await validInterface(xml.replace('type="ethernet"', 'type="tap"'))).toMatch(/fails to validate/);
    expect(await validInterface(xml.replace('ua-xdpvm-net-lan', 'ua xdpvm'))).toMatch(/fails to validate/);
  });

  it('refuses MACs that are not unicast and locally administered, before they reach XML', () => {
    for (const mac of ['03:5a:4c:56:00:01', '00:16:3e:00:00:01', '02:5A:4C:56:00:01', '02:5a:4c:56:00', '02-5a-4c-56-00-01', '02:5a:4c:56:00:01"/><x a="']) {
      expect(() => interfaceXml({ ...NIC, mac })).toThrow(new VmmError(`NIC lan: MAC ${JSON.stringify(mac)} must be a unicast, locally administered address like 02:12:34:56:78:9a (lowercase)`));
    }
  });

  it('refuses tap names Linux or libvirt would not take', () => {
    for (const tapName of ['', 'a'.repeat(16), 'tap 0', '-tap', '.tap', 'a/b', 'tap:0', 'tap\n0']) {
      expect(() => interfaceXml({ ...NIC, backend: { type: 'tap', tapName } })).toThrow(
        new VmmError(`NIC lan: tap name ${JSON.stringify(tapName)} must be 1 to 15 letters, digits, '_', '.' and '-', not starting with '.' or '-'`),
      );
    }
    expect(interfaceXml({ ...NIC, backend: { type: 'tap', tapName: 'a'.repeat(15) } })).toContain(`dev="${'a'.repeat(15)}"`);
  });

  it('refuses stream (passt) backends: libvirt 9.0 cannot connect to a passt it did not start', () => {
    expect(() => interfaceXml({ id: 'lan', backend: { type: 'stream', socketPath: '/run/user/1000/xdp-vm/passt-lan.sock' } })).toThrow(
      new VmmError('NIC lan: libvirt cannot connect a NIC to the passt listening on /run/user/1000/xdp-vm/passt-lan.sock: libvirt 9.0 has no interface type that takes the Unix socket of a passt already running; ' +
        "use libvirt's own user networking, or give this VM a bridge or vm-only network (a tap) instead"),
    );
  });

  it("libvirt's own user networking: <interface type='user'> with no backend, valid by the schema", async () => {
    const xml = interfaceXml({ id: 'web', backend: { type: 'user', forwards: [] }, mac: '02:5a:4c:56:00:02' });
    expect(xml).toBe('<interface type="user"><mac address="02:5a:4c:56:00:02"/><model type="virtio"/><alias name="ua-xdpvm-net-web"/></interface>');
    expect(await validInterface(xml)).toBe('');
  });

  it('refuses port forwards on user networking, which libvirt 9.0 has only for the passt backend it cannot parse', () => {
    expect(() => interfaceXml({ id: 'web', backend: { type: 'user', forwards: [{ host: 2222, guest: 22 }] } })).toThrow(
      new VmmError('NIC web: libvirt cannot forward host ports to a user-mode NIC: libvirt 9.0 has <portForward> only for its passt backend, which it fails to parse; remove the forwards from this network, or reach the VM over a vm-only network'),
    );
  });

  it('refuses unsafe ids, and its aliases follow libvirt\'s rule without meeting the shares\'', () => {
    expect(() => interfaceXml({ ...NIC, id: 'a b' })).toThrow(/^NIC id "a b" must start with a letter/);
    expect(nicAlias('lan')).toMatch(/^ua-[a-zA-Z0-9_.-]+$/);
    expect(nicAlias('x').startsWith(shareAlias(''))).toBe(false);
    expect(shareAlias('x').startsWith(nicAlias(''))).toBe(false);
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
    <controller type='pci' index='2' model='pcie-root-port'>
      <model name='pcie-root-port'/>
      <target chassis='2' port='0x9'/>
      <alias name='pci.2'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x1'/>
    </controller>
    <controller type='pci' index='3' model='pcie-root-port'>
      <model name='pcie-root-port'/>
      <target chassis='3' port='0xa'/>
      <alias name='pci.3'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <controller type='pci' index='4' model='pcie-root-port'>
      <model name='pcie-root-port'/>
      <target chassis='4' port='0xb'/>
      <alias name='pci.4'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x3'/>
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
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default' portid='0b1b6e4a-4e0f-4b0a-9d55-3f4c1e2a7c11' bridge='virbr0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </interface>
    <interface type='ethernet'>
      <mac address='02:5a:4c:56:00:01'/>
      <target dev='xdpvm7' managed='no'/>
      <model type='virtio'/>
      <alias name='ua-xdpvm-net-lan'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </interface>
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

  it('finds every NIC, ours and foreign, with its alias, MAC, tap and root port', () => {
    expect(domainInterfaces(DUMPXML)).toEqual([
      { type: 'network', alias: 'net0', mac: '52:54:00:6b:3c:58', tap: 'vnet0', location: 'pci.2' },
      { type: 'ethernet', alias: 'ua-xdpvm-net-lan', mac: '02:5a:4c:56:00:01', tap: 'xdpvm7', location: 'pci.4' },
    ]);
    expect(domainInterfaces(`<domain><devices><interface type='user'><model type='virtio'/></interface></devices></domain>`)).toEqual([{ type: 'user' }]);
    expect(() => domainInterfaces(`<domain><devices><interface><mac address='02:00:00:00:00:01'/></interface></devices></domain>`)).toThrow(/unexpected <interface>/);
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

/**
 * The adapter's NIC calls against a stand-in virsh: `domstate` says running,
 * `dumpxml` prints the fixture file, `attach-device` keeps the XML it was
 * given and (when there is one) swaps in the next dumpxml, `event` follows a
 * file the test appends lines to. Every call is logged.
 */
describe('the libvirt adapter\'s NICs, against a stand-in virsh', () => {
  let fake: string;
  let adapter: LibvirtAdapter;
  const calls = () => readFileSync(path.join(fake, 'calls.log'), 'utf8').trim().split('\n');

  beforeAll(async () => {
    fake = mkdtempSync(path.join(tmpdir(), 'xdpvm-fake-virsh-'));
    const virsh = path.join(fake, 'virsh');
    writeFileSync(
      virsh,
      `#!/bin/sh
d='${fake}'
shift 2
echo "$*" >> "$d/calls.log"
case "$1" in
  domstate) echo running ;;
  dumpxml) cat "$d/dumpxml.xml" ;;
  attach-device) cp "$5" "$d/attached.xml"; [ -f "$d/next.xml" ] && mv "$d/next.xml" "$d/dumpxml.xml"; exit 0 ;;
  event) exec tail -n 0 -F "$d/events.log" ;;
  *) echo "error: unexpected $*" >&2; exit 1 ;;
esac
`,
    );
    chmodSync(virsh, 0o755);
    writeFileSync(path.join(fake, 'dumpxml.xml'), DUMPXML);
    writeFileSync(path.join(fake, 'events.log'), '');
    adapter = await LibvirtAdapter.connect({ domain: 'lv', uri: 'test:///fake', virsh, pollMs: 60_000 });
  });
  afterAll(async () => {
    await adapter?.close();
    rmSync(fake, { recursive: true, force: true });
  });

  it('listNet recovers our id from the alias, leaves the foreign NIC without one, and gives each its root port', async () => {
    expect(adapter.net).toBe(adapter);
    expect(await adapter.listNet()).toEqual([
      { kind: 'net', id: undefined, deviceId: 'net0', location: 'pci.2' },
      { kind: 'net', id: 'lan', deviceId: 'ua-xdpvm-net-lan', location: 'pci.4' },
    ]);
  });

  it('refuses a bad spec without calling virsh, and a NIC the domain already has', async () => {
    const before = calls().length;
    await expect(adapter.attachNet({ ...NIC, id: 'wifi', mac: '01:00:5e:00:00:01' })).rejects.toThrow('NIC wifi: MAC "01:00:5e:00:00:01" must be a unicast');
    await expect(adapter.attachNet({ id: 'wifi', backend: { type: 'stream', socketPath: '/run/p.sock' } })).rejects.toThrow(/^NIC wifi: libvirt cannot connect a NIC to the passt/);
    await expect(adapter.detachNet('a b')).rejects.toThrow(/^NIC id "a b" must start/);
    expect(calls().length).toBe(before);
    await expect(adapter.attachNet(NIC)).rejects.toThrow(
      'NIC lan: device ua-xdpvm-net-lan is already in domain lv (started with it, or left by an earlier daemon); detach it first',
    );
    await expect(adapter.detachNet('wifi')).rejects.toThrow('NIC wifi is not attached to domain lv');
    expect(calls().some((c) => c.startsWith('attach-device') || c.startsWith('detach-device'))).toBe(false);
  });

  it('attaches with attach-device --live, and a removal it did not ask for is an unexpected detach', async () => {
    const wifi: NetSpec = { id: 'wifi', backend: { type: 'tap', tapName: 'xdpvm8' }, mac: '02:5a:4c:56:00:02' };
    const ours = interfaceXml(wifi).replace('/>', '/><address type="pci" domain="0x0000" bus="0x03" slot="0x00" function="0x0"/>');
    writeFileSync(path.join(fake, 'next.xml'), DUMPXML.replace('</devices>', `${ours}</devices>`));
    const handle = await adapter.attachNet(wifi);
    expect(handle).toEqual({ kind: 'net', id: 'wifi', deviceId: 'ua-xdpvm-net-wifi', location: 'pci.3' });
    expect(readFileSync(path.join(fake, 'attached.xml'), 'utf8')).toBe(interfaceXml(wifi));
    expect(calls().find((c) => c.startsWith('attach-device'))).toMatch(/^attach-device --domain lv --file \S+\/device\.xml --live$/);

    const detached = new Promise<VmmEvent>((resolve) => adapter.events.subscribe((e) => e.type === 'device-detached' && resolve(e)));
    appendFileSync(path.join(fake, 'events.log'), "event 'device-removed' for domain 'lv': ua-xdpvm-net-wifi\n");
    expect(await detached).toEqual({ type: 'device-detached', kind: 'net', id: 'wifi', deviceId: 'ua-xdpvm-net-wifi', expected: false });
  });
});
