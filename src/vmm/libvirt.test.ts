import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { requireProgram } from '../deps.js';
import { ExecError, runProgram } from '../exec.js';
import { capabilitiesOf, VmmError, type NetSpec, type UsbSpec, type VmmEvent } from './adapter.js';
import { LibvirtAdapter } from './libvirt.js';
import {
  domainFilesystems,
  domainHasUsbBus,
  domainInterfaces,
  domainUsbHostdevs,
  filesystemXml,
  hostdevXml,
  interfaceXml,
  nicAlias,
  parseEventLine,
  parseXml,
  shareAlias,
  usbAlias,
  xmlAttr,
  xmlElement,
} from './libvirt-xml.js';

/**
 * The XML the libvirt adapter builds, checked by libvirt's own RelaxNG schema
 * (xmllint, libxml2-utils; the schema ships with libvirt0), and the `virsh
 * dumpxml` and `virsh event` output it reads. The dumpxml fixture is what
 * libvirt 9.0 printed here for a TCG q35 domain with two hot-plugged shares
 * and a hot-plugged NIC on a tap, plus a 9p share and a NIC on a libvirt
 * network, trimmed; it is itself checked against domain.rng. The adapter's NIC
 * and USB calls run against a stand-in virsh that serves that XML. This host
 * has no USB bus, so no USB device could be attached for real: the USB
 * hostdevs in the fixtures are as libvirt 9.0 printed them here for a defined
 * domain, with the alias and guest address a running one adds.
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
  for (const device of ['interface', 'hostdev']) {
    writeFileSync(
      path.join(dir, `${device}.rng`),
      `<grammar xmlns="http://relaxng.org/ns/structure/1.0"><include href="${SCHEMAS}/domaincommon.rng"/><start><ref name="${device}"/></start></grammar>`,
    );
  }
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
const validHostdev = (xml: string) => relaxng(path.join(dir, 'hostdev.rng'), xml);

/** Each edit of `xml`, [from, to], must fail `validate`: the schema rejects what libvirt would, so its passing means something. */
async function expectRejected(validate: (xml: string) => Promise<string>, xml: string, edits: readonly (readonly [string, string])[]): Promise<void> {
  for (const [from, to] of edits) expect(await validate(xml.replace(from, to)), `${from} → ${to}`).toMatch(/fails to validate/);
}

/** `xml` is exactly `expected`, and `validate` passes it. */
async function expectValid(validate: (xml: string) => Promise<string>, xml: string, expected: string): Promise<void> {
  expect(xml).toBe(expected);
  expect(await validate(xml)).toBe('');
}

const SPEC = { id: 'xdpvm-doc', tag: 'xdp-vm-doc', socketPath: '/run/user/1000/xdp-vm/work-doc.sock', queueSize: 1024 };

describe('device XML for virsh attach-device', () => {
  it('is the filesystem element libvirt documents for an external virtiofsd, and passes its schema', async () => {
    await expectValid(
      validDevice,
      filesystemXml(SPEC),
      '<filesystem type="mount" accessmode="passthrough"><driver type="virtiofs" queue="1024"/>' +
        '<source socket="/run/user/1000/xdp-vm/work-doc.sock"/><target dir="xdp-vm-doc"/><alias name="ua-xdpvm-fs-xdpvm-doc"/></filesystem>',
    );
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
    await expectRejected(validDevice, filesystemXml(SPEC), [
      [SPEC.socketPath, 'relative.sock'],
      [SPEC.socketPath, '/a&#10;b.sock'],
      ['ua-xdpvm-fs-xdpvm-doc', 'ua xdpvm'],
    ]);
    expect(await validDevice(xmlElement('filesystem', { type: 'mount' }, [xmlElement('driver', { type: 'virtiofs', queue: 'many' }), xmlElement('source', { socket: '/s' }), xmlElement('target', { dir: 't' })]))).toMatch(/fails to validate/);
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
    await expectRejected(validInterface, interfaceXml(NIC), [
      ['02:5a:4c:56:00:01', '03:5a:4c:56:00:01'],
      ['dev="xdpvm7"', 'dev="xdp vm7"'],
      ['managed="no"', 'managed="maybe"'],
      ['type="ethernet"', 'type="tap"'],
      ['ua-xdpvm-net-lan', 'ua xdpvm'],
    ]);
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

const STICK: UsbSpec = { id: 'stick', vendorId: 0x46f4, productId: 0x0001, hostBus: 1, hostAddress: 99, fd: 17 };

describe('hostdev XML for virsh attach-device', () => {
  it('names the vendor and product ids and the host address, carries our alias, and passes the schema, which rejects what libvirt would', async () => {
    const xml = hostdevXml(STICK);
    const expected = '<hostdev mode="subsystem" type="usb"><source><vendor id="0x46f4"/><product id="0x0001"/><address bus="1" device="99"/></source>';
    await expectValid(validHostdev, xml, `${expected}<alias name="ua-xdpvm-usb-stick"/></hostdev>`);
    await expectRejected(validHostdev, xml, [
      ['0x46f4', '0x46f40'],
      ['device="99"', 'device="1000"'],
      ['type="usb"', 'type="usbx"'],
      ['<product id="0x0001"/>', ''],
      ['ua-xdpvm-usb-stick', 'ua xdpvm'],
    ]);
    // No managed (PCI only), no startupPolicy (the default fails on a missing device), no descriptor.
    expect(xml).not.toMatch(/managed|startupPolicy|17/);
    const edges = hostdevXml({ id: 'edge', vendorId: 0xffff, productId: 0, hostBus: 255, hostAddress: 127 });
    expect(edges).toContain('<vendor id="0xffff"/><product id="0x0000"/><address bus="255" device="127"/>');
    expect(await validHostdev(edges)).toBe('');
  });

  it("aliases follow libvirt's rule for user aliases without meeting the shares' or the NICs'", () => {
    expect(usbAlias('stick')).toMatch(/^ua-[a-zA-Z0-9_.-]+$/);
    for (const other of [shareAlias(''), nicAlias('')]) {
      expect(usbAlias('x').startsWith(other)).toBe(false);
      expect(`${other}x`.startsWith(usbAlias(''))).toBe(false);
    }
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

/** A USB hostdev as libvirt 9.0 prints it in a running domain's XML (the source's children here on one line). */
const printedUsbHostdev = (alias: string, port: number, source: string) =>
  `    <hostdev mode='subsystem' type='usb' managed='no'>\n      ${source}\n      <alias name='${alias}'/>\n      <address type='usb' bus='0' port='${port}'/>\n    </hostdev>\n`;

/** The fixture with a USB controller and hostdevs: ours on port 1, a PCI one, one by ids only on port 2 and one by address only on port 3. */
const USB_DUMPXML = DUMPXML.replace(
  "    <controller type='pci' index='0' model='pcie-root'>",
  `    <controller type='usb' index='0' model='qemu-xhci'>
      <alias name='usb'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1d' function='0x0'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'>`,
).replace(
  "    <memballoon model='none'/>",
  printedUsbHostdev('ua-xdpvm-usb-stick', 1, "<source><vendor id='0x46f4'/><product id='0x0001'/><address bus='1' device='99'/></source>") +
    `    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x06' slot='0x02' function='0x0'/>
      </source>
      <alias name='hostdev2'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1e' function='0x0'/>
    </hostdev>
` +
    printedUsbHostdev('hostdev0', 2, "<source startupPolicy='optional'><vendor id='0x1d6b'/><product id='0x0104'/></source>") +
    printedUsbHostdev('hostdev1', 3, "<source><address bus='2' device='8'/></source>") +
    "    <memballoon model='none'/>",
);

/** USB turned off, as libvirt 9.0 printed it for the e2e tier's q35 domains. */
const NO_USB_DUMPXML = DUMPXML.replace(
  "    <controller type='pci' index='0' model='pcie-root'>",
  `    <controller type='usb' index='0' model='none'>
      <alias name='usb'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'>`,
);

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

  it('the USB fixtures are domains the schema accepts', async () => {
    expect(await relaxng(path.join(SCHEMAS, 'domain.rng'), USB_DUMPXML)).toBe('');
    expect(await relaxng(path.join(SCHEMAS, 'domain.rng'), NO_USB_DUMPXML)).toBe('');
  });

  it('finds the USB hostdevs, ours and foreign, with their source and USB port, and leaves PCI hostdevs out', () => {
    expect(domainUsbHostdevs(USB_DUMPXML)).toEqual([
      { alias: 'ua-xdpvm-usb-stick', vendorId: 0x46f4, productId: 0x0001, hostBus: 1, hostAddress: 99, location: 'usb port 1' },
      { alias: 'hostdev0', vendorId: 0x1d6b, productId: 0x0104, location: 'usb port 2' },
      { alias: 'hostdev1', hostBus: 2, hostAddress: 8, location: 'usb port 3' },
    ]);
    expect(domainUsbHostdevs(DUMPXML)).toEqual([]);
    // Numbers as libvirt reads them: 0x hex, a leading 0 octal; no controller alias in an inactive definition.
    const handWritten = `<domain><devices><hostdev mode='subsystem' type='usb'><source><vendor id='4660'/><product id='0xBEEF'/><address bus='0x2' device='010'/></source><address type='usb' bus='0' port='1.2'/></hostdev></devices></domain>`;
    expect(domainUsbHostdevs(handWritten)).toEqual([{ vendorId: 0x1234, productId: 0xbeef, hostBus: 2, hostAddress: 8, location: 'usb bus 0 port 1.2' }]);
    expect(() => domainUsbHostdevs(handWritten.replace("'0xBEEF'", "'beef'"))).toThrow(/unexpected USB <hostdev>/);
    expect(() => domainUsbHostdevs(handWritten.replace("'4660'", "'0x10000'"))).toThrow(/unexpected USB <hostdev>/);
  });

  it('tells a domain with a USB bus from one with USB turned off or no USB controller at all', () => {
    expect(domainHasUsbBus(USB_DUMPXML)).toBe(true);
    expect(domainHasUsbBus(NO_USB_DUMPXML)).toBe(false);
    expect(domainHasUsbBus(DUMPXML)).toBe(false);
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
 * A stand-in virsh for the adapter's calls: `domstate` says running, `dumpxml`
 * prints the fixture file (`serve` replaces it), `attach-device` keeps the XML
 * it was given and (when there is one) swaps in the next dumpxml, or fails as
 * `failNextAttach` says, `detach-device-alias` swaps in the next dumpxml and
 * reports the device removed, as libvirt does, and `event` follows a file the
 * test appends lines to (`removed`). Every call is logged.
 */
function standInVirsh(fixture: string) {
  let fake = '';
  let adapter: LibvirtAdapter | undefined;
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
  attach-device)
    if [ -f "$d/attach-error" ]; then cat "$d/attach-error" >&2; rm "$d/attach-error"; exit 1; fi
    cp "$5" "$d/attached.xml"; [ -f "$d/next.xml" ] && mv "$d/next.xml" "$d/dumpxml.xml"; exit 0 ;;
  detach-device-alias)
    [ -f "$d/next.xml" ] && mv "$d/next.xml" "$d/dumpxml.xml"
    echo "event 'device-removed' for domain 'lv': $5" >> "$d/events.log"
    echo 'Device detach request sent successfully' ;;
  event) exec tail -n 0 -F "$d/events.log" ;;
  *) echo "error: unexpected $*" >&2; exit 1 ;;
esac
`,
    );
    chmodSync(virsh, 0o755);
    writeFileSync(path.join(fake, 'dumpxml.xml'), fixture);
    writeFileSync(path.join(fake, 'events.log'), '');
    adapter = await LibvirtAdapter.connect({ domain: 'lv', uri: 'test:///fake', virsh, pollMs: 60_000 });
  });
  afterAll(async () => {
    await adapter?.close();
    rmSync(fake, { recursive: true, force: true });
  });
  return {
    adapter: () => adapter!,
    calls: () => readFileSync(path.join(fake, 'calls.log'), 'utf8').trim().split('\n'),
    attached: () => readFileSync(path.join(fake, 'attached.xml'), 'utf8'),
    serve: (xml: string) => writeFileSync(path.join(fake, 'dumpxml.xml'), xml),
    serveNext: (xml: string) => writeFileSync(path.join(fake, 'next.xml'), xml),
    failNextAttach: (stderr: string) => writeFileSync(path.join(fake, 'attach-error'), stderr),
    removed: (alias: string) => appendFileSync(path.join(fake, 'events.log'), `event 'device-removed' for domain 'lv': ${alias}\n`),
  };
}

/** The next device-detached event. */
const nextDetach = (adapter: LibvirtAdapter) =>
  new Promise<VmmEvent>((resolve) => {
    const off = adapter.events.subscribe((e) => {
      if (e.type !== 'device-detached') return;
      off();
      resolve(e);
    });
  });

describe('the libvirt adapter\'s NICs, against a stand-in virsh', () => {
  const fake = standInVirsh(DUMPXML);

  it('listNet recovers our id from the alias, leaves the foreign NIC without one, and gives each its root port', async () => {
    const adapter = fake.adapter();
    expect(adapter.net).toBe(adapter);
    expect(await adapter.listNet()).toEqual([
      { kind: 'net', id: undefined, deviceId: 'net0', location: 'pci.2' },
      { kind: 'net', id: 'lan', deviceId: 'ua-xdpvm-net-lan', location: 'pci.4' },
    ]);
  });

  it('refuses a bad spec without calling virsh, and a NIC the domain already has', async () => {
    const adapter = fake.adapter();
    const before = fake.calls().length;
    await expect(adapter.attachNet({ ...NIC, id: 'wifi', mac: '01:00:5e:00:00:01' })).rejects.toThrow('NIC wifi: MAC "01:00:5e:00:00:01" must be a unicast');
    await expect(adapter.attachNet({ id: 'wifi', backend: { type: 'stream', socketPath: '/run/p.sock' } })).rejects.toThrow(/^NIC wifi: libvirt cannot connect a NIC to the passt/);
    await expect(adapter.detachNet('a b')).rejects.toThrow(/^NIC id "a b" must start/);
    expect(fake.calls().length).toBe(before);
    await expect(adapter.attachNet(NIC)).rejects.toThrow(
      'NIC lan: device ua-xdpvm-net-lan is already in domain lv (started with it, or left by an earlier daemon); detach it first',
    );
    await expect(adapter.detachNet('wifi')).rejects.toThrow('NIC wifi is not attached to domain lv');
    expect(fake.calls().some((c) => c.startsWith('attach-device') || c.startsWith('detach-device'))).toBe(false);
  });

  it('attaches with attach-device --live, and a removal it did not ask for is an unexpected detach', async () => {
    const adapter = fake.adapter();
    const wifi: NetSpec = { id: 'wifi', backend: { type: 'tap', tapName: 'xdpvm8' }, mac: '02:5a:4c:56:00:02' };
    const ours = interfaceXml(wifi).replace('/>', '/><address type="pci" domain="0x0000" bus="0x03" slot="0x00" function="0x0"/>');
    fake.serveNext(DUMPXML.replace('</devices>', `${ours}</devices>`));
    const handle = await adapter.attachNet(wifi);
    expect(handle).toEqual({ kind: 'net', id: 'wifi', deviceId: 'ua-xdpvm-net-wifi', location: 'pci.3' });
    expect(fake.attached()).toBe(interfaceXml(wifi));
    expect(fake.calls().find((c) => c.startsWith('attach-device'))).toMatch(/^attach-device --domain lv --file \S+\/device\.xml --live$/);

    const detached = nextDetach(adapter);
    fake.removed('ua-xdpvm-net-wifi');
    expect(await detached).toEqual({ type: 'device-detached', kind: 'net', id: 'wifi', deviceId: 'ua-xdpvm-net-wifi', expected: false });
  });
});

/** `USB_DUMPXML` with one more of our hostdevs, as libvirt prints it once attached. */
function withOurHostdev(spec: UsbSpec, port: number): string {
  const ours = hostdevXml(spec).replace('</hostdev>', `<address type="usb" bus="0" port="${port}"/></hostdev>`);
  return USB_DUMPXML.replace('</devices>', `${ours}</devices>`);
}

describe('the libvirt adapter\'s USB devices, against a stand-in virsh', () => {
  const fake = standInVirsh(USB_DUMPXML);
  const CAM: UsbSpec = { id: 'cam', vendorId: 0x046d, productId: 0x0825, hostBus: 3, hostAddress: 7 };

  it('has the usb capability, and listUsb gives every USB hostdev with our id where the alias is ours', async () => {
    const adapter = fake.adapter();
    expect(adapter.usb).toBe(adapter);
    expect(capabilitiesOf(adapter)).toEqual(['shares', 'usb', 'net']);
    expect(await adapter.listUsb()).toEqual([
      { kind: 'usb', id: 'stick', deviceId: 'ua-xdpvm-usb-stick', location: 'usb port 1' },
      { kind: 'usb', id: undefined, deviceId: 'hostdev0', location: 'usb port 2' },
      { kind: 'usb', id: undefined, deviceId: 'hostdev1', location: 'usb port 3' },
    ]);
  });

  it('refuses a bad spec without calling virsh', async () => {
    const adapter = fake.adapter();
    const before = fake.calls().length;
    await expect(adapter.attachUsb({ ...CAM, id: 'a b' })).rejects.toThrow(/^USB device id "a b" must start with a letter/);
    // checkUsbSpec's rules (adapter-base), before virsh is run.
    for (const bad of [{ vendorId: 0x10000 }, { productId: -1 }, { vendorId: 1.5 }]) {
      await expect(adapter.attachUsb({ ...CAM, ...bad })).rejects.toThrow(/^USB device cam: vendor \S+ and product \S+ must be/);
    }
    for (const hostBus of [0, 256]) await expect(adapter.attachUsb({ ...CAM, hostBus })).rejects.toThrow(`USB device cam: bus ${hostBus} must be`);
    for (const hostAddress of [0, 128, Number.NaN]) await expect(adapter.attachUsb({ ...CAM, hostAddress })).rejects.toThrow(`USB device cam: address ${hostAddress} must be`);
    await expect(adapter.detachUsb('a b')).rejects.toThrow(/^USB device id "a b" must start/);
    expect(fake.calls().length).toBe(before);
  });

  it('refuses a device the domain already has, and a domain with USB turned off, before attach-device', async () => {
    const adapter = fake.adapter();
    await expect(adapter.attachUsb({ ...STICK, hostAddress: 100 })).rejects.toThrow(
      'USB device stick (46f4:0001 at host bus 1 address 100): device ua-xdpvm-usb-stick is already in domain lv (started with it, or left by an earlier daemon); detach it first',
    );
    fake.serve(NO_USB_DUMPXML);
    try {
      await expect(adapter.attachUsb(CAM)).rejects.toThrow(
        "USB device cam (046d:0825 at host bus 3 address 7): domain lv has no USB controller (<controller type='usb' model='none'/>, or none at all), " +
          "and libvirt cannot add one to a running domain; give it one, e.g. <controller type='usb' model='qemu-xhci'/>, and restart it",
      );
    } finally {
      fake.serve(USB_DUMPXML);
    }
    expect(fake.calls().some((c) => c.startsWith('attach-device'))).toBe(false);
  });

  it("translates libvirt's refusal into one naming the device and why", async () => {
    const adapter = fake.adapter();
    // What libvirt 9.0 answered here, on a host without a USB bus.
    fake.failNextAttach("error: Failed to attach device from /tmp/x/device.xml\nerror: cannot open directory '/sys/bus/usb/devices': No such file or directory\n");
    await expect(adapter.attachUsb(CAM)).rejects.toThrow(
      new VmmError(
        "USB device cam (046d:0825 at host bus 3 address 7): attach-device failed: cannot open directory '/sys/bus/usb/devices': No such file or directory; " +
          'libvirtd sees no USB bus on this host, so the device is not there',
      ),
    );
    // Its refusal on a host with USB but nothing there (as users report it; not recorded here).
    fake.failNextAttach('error: Failed to attach device from /tmp/x/device.xml\nerror: internal error: Did not find USB device 046d:0825 bus:3 device:7\n');
    await expect(adapter.attachUsb(CAM)).rejects.toThrow(/: attach-device failed: internal error: Did not find USB device 046d:0825 bus:3 device:7; the device is not at that bus and address now: unplugged, or renumbered by a replug$/);
    expect(await adapter.listUsb()).toHaveLength(3);
  });

  it('attaches with attach-device --live, detaches by alias and waits for the removal, and an unknown id is an error', async () => {
    const adapter = fake.adapter();
    const seen: VmmEvent[] = [];
    const off = adapter.events.subscribe((e) => seen.push(e));
    fake.serveNext(withOurHostdev(CAM, 4));
    expect(await adapter.attachUsb({ ...CAM, fd: 21 })).toEqual({ kind: 'usb', id: 'cam', deviceId: 'ua-xdpvm-usb-cam', location: 'usb port 4' });
    expect(fake.attached()).toBe(hostdevXml(CAM));
    expect(fake.calls().at(-2)).toMatch(/^attach-device --domain lv --file \S+\/device\.xml --live$/);
    expect((await adapter.listUsb()).map((d) => d.id)).toEqual(['stick', undefined, undefined, 'cam']);

    fake.serveNext(USB_DUMPXML);
    await adapter.detachUsb('cam');
    expect(fake.calls()).toContain('detach-device-alias --domain lv --alias ua-xdpvm-usb-cam --live');
    expect((await adapter.listUsb()).map((d) => d.id)).toEqual(['stick', undefined, undefined]);
    await expect(adapter.detachUsb('cam')).rejects.toThrow('USB device cam is not attached to domain lv');
    off();
    expect(seen).toEqual([{ type: 'device-detached', kind: 'usb', id: 'cam', deviceId: 'ua-xdpvm-usb-cam', expected: true }]);
  });

  it('a hostdev removed without our asking is an unexpected detach', async () => {
    const adapter = fake.adapter();
    fake.serveNext(withOurHostdev(CAM, 4));
    await adapter.attachUsb(CAM);
    const detached = nextDetach(adapter);
    fake.serve(USB_DUMPXML);
    fake.removed('ua-xdpvm-usb-cam');
    expect(await detached).toEqual({ type: 'device-detached', kind: 'usb', id: 'cam', deviceId: 'ua-xdpvm-usb-cam', expected: false });
    // Foreign devices and ones we did not attach are not ours to report.
    const none = vi.fn();
    const off = adapter.events.subscribe(none);
    fake.removed('hostdev0');
    fake.removed('ua-xdpvm-usb-stick');
    await new Promise((r) => setTimeout(r, 300));
    off();
    expect(none).not.toHaveBeenCalled();
  });
});
