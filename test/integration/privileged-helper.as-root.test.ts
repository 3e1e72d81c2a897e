import { build, type BuildOptions } from 'esbuild';
import { chmodSync, chownSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Bus, BusCallError } from '../../src/dbus/bus.js';
import { requireProgram } from '../../src/deps.js';
import { ExecError, runProgram } from '../../src/exec.js';
import { HELPER_BUS_NAME, HELPER_INTERFACE, HELPER_PATH } from '../../src/helper/commands.js';
import { packageRoot } from '../../src/paths.js';
import { startSystemHelper, type SystemHelper } from '../../src/testbed/system-helper.js';
import { startPrivateBus } from '../../src/testbed/private-bus.js';
import { helperProblem } from '../../src/helper/client.js';

/**
 * The privileged helper as it runs for real: root, on a bus configured like
 * the system bus (deny by default, our own policy file from data/ punching
 * its hole), called by non-root uids (setpriv), so the uid it acts for is the
 * one dbus-daemon read from the caller's socket. It runs in a private
 * network namespace with its own sysfs: the bridges and taps exist only
 * there. This machine has no USB controller, so the USB commands run
 * against a fake sysfs (regular files and symlinks laid out as the kernel's)
 * and a device node made with mknod: the refusals, the "no such device"
 * messages and the usbip sysfs write sequence are checked; the kernel's side
 * of usbip comes with the USB work.
 */
const repo = packageRoot();
const USER = 1000; // cloudsdk here: has a passwd entry
// Named by its uid in the allow list. Every caller needs a passwd entry: the system bus cannot work out the groups
// of a uid without one and never answers its Hello, so such a uid cannot reach the helper at all.
const OTHER = 65534;
let otherName = '';
let userName = '';
let scratch = '';
let bundles = '';
let address = '';
let allowList = '';
let usb = '';
let devUsb = '';
let stateDir = '';
let system: SystemHelper | undefined;
let root: Bus | undefined;
let helperLog: string[] = [];

const CLIENT = `
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { HelperClient } from './client.ts';
const [address, name, arg] = process.argv.slice(2);
const client = await HelperClient.connect(address);
try {
  const value = await client.run(name, arg);
  let read;
  if (name === 'usb-open') {
    const buf = Buffer.alloc(8, 0xaa);
    read = { bytes: readSync(value, buf, 0, 8, null), hex: buf.toString('hex') };
    closeSync(value);
  }
  if (name === 'usb-export') {
    // A stream socket; with a fake sysfs nobody keeps the kernel's end, so it reads as ended.
    read = { socket: fstatSync(value).isSocket(), bytes: readSync(value, Buffer.alloc(8), 0, 8, null) };
    closeSync(value);
  }
  if (name === 'tap-open') {
    // tun's fdinfo names the interface a queue is attached to.
    read = { iff: /iff:\\s*(\\S+)/.exec(readFileSync('/proc/self/fdinfo/' + value, 'utf8'))?.[1] };
    closeSync(value);
  }
  console.log(JSON.stringify({ ok: true, value: name === 'tap-open' ? 'fd' : value, read }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, errorName: err.errorName, message: err.message.replace(/^\\w+: [\\w.]+: /, '') }));
} finally {
  client.close();
}
`;

/** Lay out /sys/bus/usb as the kernel does, for the devices the tests use. */
async function fakeUsb(dir: string, nodes: string): Promise<void> {
  const device = (busid: string, a: { vendor: string; product: string; cls: string; ifaces: string[]; devnum: number; dev: string }) => {
    const d = path.join(dir, 'devices', busid);
    mkdirSync(d, { recursive: true });
    const attrs: Record<string, string> = { idVendor: a.vendor, idProduct: a.product, bDeviceClass: a.cls, busnum: '1', devnum: String(a.devnum), dev: a.dev };
    for (const [k, v] of Object.entries(attrs)) writeFileSync(path.join(d, k), `${v}\n`);
    a.ifaces.forEach((c, i) => {
      mkdirSync(path.join(d, `${busid}:1.${i}`));
      writeFileSync(path.join(d, `${busid}:1.${i}`, 'bInterfaceClass'), `${c}\n`);
    });
    symlinkSync('../../drivers/usb', path.join(d, 'driver'));
  };
  for (const drv of ['usb', 'usbip-host']) mkdirSync(path.join(dir, 'drivers', drv), { recursive: true });
  for (const f of ['usb/unbind', 'usbip-host/match_busid', 'usbip-host/bind', 'usbip-host/unbind', 'usbip-host/rebind']) writeFileSync(path.join(dir, 'drivers', f), '');
  device('1-1', { vendor: '05e3', product: '0608', cls: '09', ifaces: ['09'], devnum: 2, dev: '189:1' });
  device('1-2', { vendor: '0781', product: '5581', cls: '00', ifaces: ['08'], devnum: 3, dev: '1:5' });
  device('1-3', { vendor: '046d', product: 'c52b', cls: '00', ifaces: ['03', '03'], devnum: 4, dev: '189:3' });
  device('1-4', { vendor: '0781', product: '5582', cls: '00', ifaces: ['08'], devnum: 5, dev: '1:3' });
  // 1-2's node is /dev/zero's (1:5): it reads zeros. 1-4's node does not match its sysfs "dev".
  mkdirSync(path.join(nodes, '001'), { recursive: true, mode: 0o700 });
  chmodSync(nodes, 0o700);
  for (const n of ['003', '005']) await runProgram('mknod', ['-m', '600', path.join(nodes, '001', n), 'c', '1', '5']);
}

const ALLOW = (name: string) =>
  [
    '# the test allow list',
    `bridge ${name} br0 br-gone notabr`,
    `bridge ${OTHER} br1`,
    `usb ${name} class:08 05e3:*`,
    `usb ${OTHER} class:08`,
    `vm-only ${name} xdpvm-lab 10.77.0.1/24`,
    `vm-only ${name} br3 10.78.0.1/24`,
  ].join('\n');

function writeAllowList(text: string): void {
  system!.writeAllowList(text);
}

interface Reply {
  ok: boolean;
  value?: string | number;
  read?: { bytes: number; hex: string };
  errorName?: string;
  message?: string;
}

/** One request through the helper's client library, as `uid`. */
async function call(uid: number, name: string, arg: string): Promise<Reply> {
  const { stdout } = await runProgram(requireProgram('setpriv'), [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', process.execPath, path.join(bundles, 'client.mjs'), address, name, arg], {
    timeoutMs: 30_000,
  });
  return JSON.parse(stdout) as Reply;
}

/** The same through the CLI, `xdp-vm helper COMMAND ARG`, as `uid`. */
async function cli(uid: number, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await runProgram(requireProgram('setpriv'), [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', process.execPath, path.join(bundles, 'cli', 'xdp-vm.mjs'), 'helper', ...args, '--bus', address], { timeoutMs: 30_000 });
    return { code: 0, ...r };
  } catch (err) {
    if (!(err instanceof ExecError)) throw err;
    return { code: err.exitCode ?? -1, stdout: '', stderr: err.stderr };
  }
}

/** A command in the helper's network and mount namespaces (where /sys is that namespace's). */
async function inNs(file: string, args: string[]): Promise<string> {
  return system!.inNs(file, args, { mount: true });
}

async function links(): Promise<{ ifname: string; master?: string; flags: string[]; linkinfo?: { info_kind?: string } }[]> {
  return JSON.parse(await inNs(requireProgram('ip'), ['-j', '-d', 'link', 'show']));
}

/** The helper's log lines for requests, parsed. */
function decisions(): Record<string, unknown>[] {
  return helperLog.flatMap((l) => {
    try {
      const o = JSON.parse(l) as Record<string, unknown>;
      return o.module === 'helper' && o.decision ? [o] : [];
    } catch {
      return [];
    }
  });
}

/** Exactly one log line for what `fn` asked. */
async function oneLine<T>(fn: () => Promise<T>): Promise<{ result: T; line: Record<string, unknown> }> {
  const before = decisions().length;
  const result = await fn();
  const deadline = Date.now() + 2000;
  while (decisions().length === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 50));
  const lines = decisions().slice(before);
  expect(lines).toHaveLength(1);
  return { result, line: lines[0]! };
}

const TUNSETIFF = `
import errno, fcntl, os, struct, sys
uid, name = int(sys.argv[1]), sys.argv[2]
fd = os.open('/dev/net/tun', os.O_RDWR)
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
try:
    fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH22x', name.encode(), 0x0002 | 0x1000))
    print('attached')
except OSError as e:
    print(errno.errorcode[e.errno])
`;

/** Whether `uid` may attach to `tap` (TUNSETIFF checks the tap's owner against the caller's euid). */
async function canAttach(uid: number, tap: string): Promise<string> {
  return (await inNs(requireProgram('python3'), ['-c', TUNSETIFF, String(uid), tap])).trim();
}

const skip = process.getuid?.() !== 0 ? 'needs root: the helper makes taps and the test makes a network namespace' : undefined;

beforeAll(async () => {
  if (skip) return;
  userName = (await runProgram(requireProgram('getent'), ['passwd', String(USER)])).stdout.split(':')[0]!;
  otherName = (await runProgram(requireProgram('getent'), ['passwd', String(OTHER)])).stdout.split(':')[0]!;
  scratch = mkdtempSync(path.join(os.tmpdir(), 'xdp-vm-helper-'));
  chmodSync(scratch, 0o755);
  bundles = path.join(repo, '.cache', 'test-bundles', 'privileged-helper');
  rmSync(bundles, { recursive: true, force: true });
  const common: BuildOptions = {
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: ['usocket', 'x11'],
    banner: { js: "import { createRequire as __xdpCreateRequire } from 'node:module'; const require = __xdpCreateRequire(import.meta.url);" },
    logLevel: 'warning',
  };
  // Inside the checkout, so the bundles find the package root (dbus-interfaces/) and node_modules (usocket).
  await build({ ...common, entryPoints: { 'xdp-vm': path.join(repo, 'src', 'cli', 'main.ts') }, outdir: path.join(bundles, 'cli'), splitting: true, outExtension: { '.js': '.mjs' } });
  await build({ ...common, stdin: { contents: CLIENT, resolveDir: path.join(repo, 'src', 'helper'), loader: 'ts', sourcefile: 'client-runner.ts' }, outfile: path.join(bundles, 'client.mjs') });

  usb = path.join(scratch, 'sys', 'bus', 'usb');
  devUsb = path.join(scratch, 'dev', 'bus', 'usb');
  await fakeUsb(usb, devUsb);
  // A private network namespace, and a mount namespace whose /sys is that network namespace's.
  system = await startSystemHelper({ allowList: ALLOW(userName), cli: [process.execPath, path.join(bundles, 'cli', 'xdp-vm.mjs')], serveArgs: ['--usb-sysfs', usb, '--dev-usb', devUsb] });
  ({ address, allowList, stateDir, log: helperLog } = system);
  root = await Bus.connect(address);
  await inNs(requireProgram('ip'), ['link', 'add', 'br0', 'type', 'bridge']);
  await inNs(requireProgram('ip'), ['link', 'add', 'br1', 'type', 'bridge']);
  await inNs(requireProgram('ip'), ['link', 'add', 'br2', 'type', 'bridge']);
  await inNs(requireProgram('ip'), ['link', 'add', 'br3', 'type', 'bridge']);
  await inNs(requireProgram('ip'), ['tuntap', 'add', 'dev', 'notabr', 'mode', 'tap']);
  // A tap in the helper's name range that root made for someone else.
  await inNs(requireProgram('ip'), ['tuntap', 'add', 'dev', 'xdpvm77', 'mode', 'tap', 'user', String(OTHER)]);
}, 120_000);

afterAll(async () => {
  root?.close();
  await system?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
  if (bundles) rmSync(bundles, { recursive: true, force: true });
});

describe.skipIf(skip)('privileged helper: taps, as root in a private network namespace', () => {
  const names = async () => (await links()).map((l) => l.ifname);
  const owner = async (tap: string) => (await inNs('/bin/cat', [`/sys/class/net/${tap}/owner`])).trim();

  it('tap-create makes a tap owned by the caller, enslaved to the allowed bridge and up, with one log line; tap-delete removes it', async () => {
    const { result, line } = await oneLine(() => call(USER, 'tap-create', 'br0'));
    expect(result).toMatchObject({ ok: true, value: expect.stringMatching(/^xdpvm\d+$/) });
    const tap = String(result.value);
    const link = (await links()).find((l) => l.ifname === tap)!;
    expect(link.master).toBe('br0');
    expect(link.flags).toContain('UP');
    expect(await owner(tap)).toBe(String(USER));
    expect(line).toMatchObject({ level: 30, command: 'tap-create', arg: 'br0', uid: USER, user: userName, decision: 'allowed', tap });
    expect(line.rule).toBe(`${allowList}:2: bridge ${userName} br0 br-gone notabr`);
    // What "owned by the caller" means: TUNSETIFF on it works for that uid only.
    expect(await canAttach(USER, tap)).toBe('attached');
    expect(await canAttach(OTHER, tap)).toBe('EPERM');
    const deleted = await oneLine(() => call(USER, 'tap-delete', tap));
    expect(deleted.result).toEqual({ ok: true });
    expect(deleted.line).toMatchObject({ command: 'tap-delete', arg: tap, uid: USER, decision: 'allowed', rule: `${tap} is owned by the caller` });
    expect(await names()).not.toContain(tap);
  });

  it('tap-open hands the owner a queue of its tap across network namespaces, and refuses anyone else', async () => {
    const tap = String((await call(USER, 'tap-create', 'br0')).value);
    const { result, line } = await oneLine(() => call(USER, 'tap-open', tap));
    // The caller is in another network namespace than the tap; the descriptor still is the tap's queue.
    expect(result).toEqual({ ok: true, value: 'fd', read: { iff: tap } });
    expect(line).toMatchObject({ command: 'tap-open', arg: tap, uid: USER, decision: 'allowed', rule: `${tap} is owned by the caller` });
    expect(await call(OTHER, 'tap-open', tap)).toMatchObject({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: `${tap} belongs to uid ${USER}, not to uid ${OTHER} (${otherName})` });
    expect(await call(USER, 'tap-open', 'xdpvm55')).toMatchObject({ ok: false, errorName: 'org.freedesktop.portal.Error.NotFound', message: 'no tap xdpvm55 on this host' });
    expect(await call(USER, 'tap-open', 'br0')).toMatchObject({ ok: false, errorName: 'org.freedesktop.portal.Error.InvalidArgument' });
    expect(await call(USER, 'tap-delete', tap)).toEqual({ ok: true });
  });

  it('names each new tap with the lowest free number', async () => {
    const first = String((await call(USER, 'tap-create', 'br0')).value);
    const second = String((await call(USER, 'tap-create', 'br0')).value);
    expect(Number(second.slice(5))).toBeGreaterThan(Number(first.slice(5)));
    expect(await call(USER, 'tap-delete', first)).toEqual({ ok: true });
    expect(await call(USER, 'tap-create', 'br0')).toEqual({ ok: true, value: first });
    for (const t of [first, second]) expect(await call(USER, 'tap-delete', t)).toEqual({ ok: true });
  });

  it('through the CLI: a numeric rule names a caller by uid, and only that caller may delete the tap', async () => {
    const made = await cli(OTHER, 'tap-create', 'br1');
    expect(made).toMatchObject({ code: 0, stdout: expect.stringMatching(/^xdpvm\d+\n$/), stderr: '' });
    const tap = made.stdout.trim();
    expect(await owner(tap)).toBe(String(OTHER));
    expect(await call(USER, 'tap-delete', tap)).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: `${tap} belongs to uid ${OTHER}, not to uid ${USER} (${userName})` });
    expect(await cli(OTHER, 'tap-delete', tap)).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(await names()).not.toContain(tap);
  });

  it('refuses a bridge the allow list does not give the caller, naming the ones it does', async () => {
    const { result, line } = await oneLine(() => call(USER, 'tap-create', 'br1'));
    const why = `uid ${USER} (${userName}) may not use bridge br1: ${allowList} allows this user br0, br-gone, notabr, xdpvm-lab, br3 only`;
    expect(result).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: why });
    expect(line).toMatchObject({ level: 40, command: 'tap-create', arg: 'br1', uid: USER, decision: 'refused', reason: why });
    expect(await call(OTHER, 'tap-create', 'br2')).toMatchObject({ ok: false, message: `uid ${OTHER} (${otherName}) may not use bridge br2: ${allowList} allows this user br1 only` });
    const out = await cli(USER, 'tap-create', 'br2');
    expect(out.code).toBe(1);
    expect(out.stderr).toBe(`xdp-vm: uid ${USER} (${userName}) may not use bridge br2: ${allowList} allows this user br0, br-gone, notabr, xdpvm-lab, br3 only\n`);
  });

  it('refuses an allowed name that is no bridge, or no interface at all', async () => {
    expect(await call(USER, 'tap-create', 'br-gone')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotFound', message: 'no network interface br-gone on this host' });
    expect(await call(USER, 'tap-create', 'notabr')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: 'notabr is not a bridge' });
  });

  it('refuses bad names before anything runs', async () => {
    for (const [name, arg, message] of [
      ['tap-create', '-n', 'tap-create: "-n" is not a valid BRIDGE: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"'],
      ['tap-create', 'br0 type veth', 'tap-create: "br0 type veth" is not a valid BRIDGE: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"'],
      ['tap-create', '../../br0', 'tap-create: "../../br0" is not a valid BRIDGE: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"'],
      ['tap-delete', 'br0', 'tap-delete: "br0" is not a valid TAP: the helper\'s taps are named xdpvm0 to xdpvm9999'],
      ['usb-bind', '1-2/../1-3', 'usb-bind: "1-2/../1-3" is not a valid BUSID: a USB bus id is BUS-PORT[.PORT]..., e.g. 1-2 or 3-1.4'],
    ] as const) {
      const { result, line } = await oneLine(() => call(USER, name, arg));
      expect(result).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.InvalidArgument', message });
      expect(line).toMatchObject({ decision: 'refused', reason: message });
    }
    // The CLI checks the same words itself, and says what the commands are.
    const out = await cli(USER, 'tap-up', 'br0');
    expect(out.code).toBe(2);
    expect(out.stderr).toContain('xdp-vm: unknown command "tap-up": the helper\'s commands are tap-create BRIDGE, tap-delete TAP, tap-open TAP, vm-only-up BRIDGE, usb-bind BUSID, usb-unbind BUSID, usb-open BUSID, usb-export BUSID');
  });

  it('tap-delete refuses a tap the helper did not make for the caller, and one that is not there', async () => {
    expect(await call(USER, 'tap-delete', 'xdpvm77')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: `xdpvm77 belongs to uid ${OTHER}, not to uid ${USER} (${userName})` });
    expect(await call(USER, 'tap-delete', 'xdpvm55')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotFound', message: 'no tap xdpvm55 on this host' });
    expect(await names()).toContain('xdpvm77');
  });

  it('refuses everything while the allow list is writable by others, not root\'s, missing or wrong, but still lets a user undo', async () => {
    const tap = String((await call(USER, 'tap-create', 'br0')).value);
    const refusedWith = async (detail: string) => {
      const r = await call(USER, 'tap-create', 'br0');
      expect(r).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: `the allow list ${allowList} is not usable: ${detail}; every request is refused until it is fixed` });
    };
    try {
      chmodSync(allowList, 0o666);
      await refusedWith('the file is writable by its group (mode 0666)');
      chmodSync(allowList, 0o646);
      await refusedWith('the file is writable by others (mode 0646)');
      chmodSync(allowList, 0o644);
      chownSync(allowList, USER, USER);
      await refusedWith(`the file is owned by uid ${USER}, not root`);
      chownSync(allowList, 0, 0);
      chmodSync(path.dirname(allowList), 0o777);
      await refusedWith(`its directory ${path.dirname(allowList)} is writable by its group (mode 0777)`);
      chmodSync(path.dirname(allowList), 0o755);
      unlinkSync(allowList);
      await refusedWith('no such file: nothing is allowed (default deny); see data/helper.conf for the format');
      writeAllowList(`${ALLOW(userName)}\nbridge ${userName} br0 br\x01`);
      const r = await call(USER, 'tap-create', 'br0');
      expect(r.message).toBe(`the allow list ${allowList} is not usable: line 8: "br\\u{1}" is not a bridge name: a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"`);
      // Undoing needs no rule: the kernel's record of the tap's owner is enough.
      expect(await call(USER, 'tap-delete', tap)).toEqual({ ok: true });
      expect(await names()).not.toContain(tap);
    } finally {
      chmodSync(path.dirname(allowList), 0o755);
      writeAllowList(ALLOW(userName));
    }
  });

  it('the bus refuses other interfaces by policy, and the helper names methods it does not have', async () => {
    const raw = (iface: string, member: string) =>
      root!.call({ destination: HELPER_BUS_NAME, path: HELPER_PATH, interface: iface, member, signature: 's', body: ['br0'] }).then(
        () => 'answered',
        (err: BusCallError) => `${err.errorName}: ${err.message.replace(/^\w+: [\w.]+: /, '')}`,
      );
    expect(await raw(HELPER_INTERFACE, 'Frobnicate')).toBe(`org.freedesktop.DBus.Error.UnknownMethod: Method 'Frobnicate' on interface '${HELPER_INTERFACE}' does not exist`);
    expect(await raw('org.example.Other', 'TapCreate')).toMatch(/^org\.freedesktop\.DBus\.Error\.AccessDenied: /);
    // root is a caller like any other: no rule names it.
    expect(await raw(HELPER_INTERFACE, 'TapCreate')).toBe(`org.freedesktop.portal.Error.NotAllowed: uid 0 (root) may not use bridge br0: no "bridge" or "vm-only" rule in ${allowList} names this user or their groups`);
    const wrongType = await root!.call({ destination: HELPER_BUS_NAME, path: HELPER_PATH, interface: HELPER_INTERFACE, member: 'TapCreate', signature: 'u', body: [1] }).catch((e: BusCallError) => e.message);
    expect(wrongType).toBe('TapCreate: org.freedesktop.portal.Error.InvalidArgument: TapCreate takes (s), got (u)');
  });
});

describe.skipIf(skip)('privileged helper: vm-only bridges', () => {
  const BUSYBOX = '/bin/busybox';
  const dnsmasqPid = () => Number(readFileSync(path.join(stateDir, 'vm-only-xdpvm-lab.pid'), 'utf8'));

  it('vm-only-up makes the bridge with the admin\'s address and a DHCP server, once; taps go on it; a DHCP client gets a lease', async () => {
    const { result, line } = await oneLine(() => call(USER, 'vm-only-up', 'xdpvm-lab'));
    expect(result).toEqual({ ok: true, value: '10.77.0.1/24' });
    expect(line).toMatchObject({ command: 'vm-only-up', arg: 'xdpvm-lab', uid: USER, decision: 'allowed', address: '10.77.0.1/24', rule: `${allowList}:6: vm-only ${userName} xdpvm-lab 10.77.0.1/24` });
    const bridge = (await links()).find((l) => l.ifname === 'xdpvm-lab')!;
    expect(bridge.linkinfo?.info_kind).toBe('bridge');
    expect(bridge.flags).toContain('UP');
    const addrs = JSON.parse(await inNs(requireProgram('ip'), ['-j', 'addr', 'show', 'dev', 'xdpvm-lab'])) as { addr_info: { family: string; local: string; prefixlen: number }[] }[];
    expect(addrs[0]!.addr_info.filter((a) => a.family === 'inet')).toEqual([expect.objectContaining({ local: '10.77.0.1', prefixlen: 24 })]);
    const pid = dnsmasqPid();
    expect(readFileSync(`/proc/${pid}/comm`, 'utf8').trim()).toBe('dnsmasq');
    // Again: the same bridge and the same server.
    expect(await cli(USER, 'vm-only-up', 'xdpvm-lab')).toEqual({ code: 0, stdout: '10.77.0.1/24\n', stderr: '' });
    expect(dnsmasqPid()).toBe(pid);
    const tap = String((await call(USER, 'tap-create', 'xdpvm-lab')).value);
    expect((await links()).find((l) => l.ifname === tap)?.master).toBe('xdpvm-lab');
    // A machine on the bridge (a veth end standing in for a VM's NIC) asks for an address.
    await inNs(requireProgram('ip'), ['link', 'add', 'vm0', 'type', 'veth', 'peer', 'name', 'vm0-guest']);
    await inNs(requireProgram('ip'), ['link', 'set', 'vm0', 'master', 'xdpvm-lab', 'up']);
    await inNs(requireProgram('ip'), ['link', 'set', 'vm0-guest', 'up']);
    // udhcpc hands what it was offered to its script: print it, configure nothing.
    const script = path.join(scratch, 'udhcpc-report');
    writeFileSync(script, '#!/bin/sh\n[ "$1" = bound ] && echo "ip=$ip mask=$subnet server=$serverid router=[$router] dns=[$dns]"\nexit 0\n', { mode: 0o755 });
    const lease = await inNs(BUSYBOX, ['udhcpc', '-i', 'vm0-guest', '-n', '-q', '-f', '-t', '10', '-T', '1', '-s', script]);
    // An address on the subnet, from the host's side; no gateway and no DNS: there is no way out.
    expect(lease).toMatch(/^ip=10\.77\.0\.(\d+) mask=255\.255\.255\.0 server=10\.77\.0\.1 router=\[\] dns=\[\]$/m);
    expect(Number(/ip=10\.77\.0\.(\d+)/.exec(lease)![1])).toBeGreaterThan(1);
    await inNs(requireProgram('ip'), ['link', 'del', 'vm0']);
    expect(await call(USER, 'tap-delete', tap)).toEqual({ ok: true });
  });

  it('refuses a caller with no vm-only rule, and a bridge of that name the helper did not make', async () => {
    expect(await call(OTHER, 'vm-only-up', 'xdpvm-lab')).toEqual({
      ok: false,
      errorName: 'org.freedesktop.portal.Error.NotAllowed',
      message: `uid ${OTHER} (${otherName}) may not bring up vm-only bridge xdpvm-lab: no "vm-only" rule in ${allowList} names this user or their groups`,
    });
    expect(await call(USER, 'vm-only-up', 'br0')).toMatchObject({ ok: false, message: `uid ${USER} (${userName}) may not bring up vm-only bridge br0: ${allowList} gives this user vm-only xdpvm-lab, br3 only` });
    expect(await call(USER, 'vm-only-up', 'br3')).toEqual({
      ok: false,
      errorName: 'org.freedesktop.portal.Error.NotAllowed',
      message: 'bridge br3 exists but was not made by this helper: it gives no address or DHCP server to a bridge it did not create',
    });
    const addrs = JSON.parse(await inNs(requireProgram('ip'), ['-j', 'addr', 'show', 'dev', 'br3'])) as { addr_info: unknown[] }[];
    expect(addrs[0]!.addr_info).toEqual([]);
  });
});

describe.skipIf(skip)('privileged helper: found before anyone is asked', () => {
  it('helperProblem has nothing to say where the helper is, and says which it is where the bus is not there or has no helper', async () => {
    expect(await helperProblem(address)).toBeUndefined();
    expect(await helperProblem('unix:path=/nonexistent/system_bus_socket')).toMatch(/^the privileged helper cannot be reached on the system bus \(unix:path=\/nonexistent\/system_bus_socket\): /);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'xdpvm-nohelper-'));
    const bare = await startPrivateBus({ dir, env: {}, services: [] });
    try {
      expect(await helperProblem(bare.address)).toBe('the privileged helper is not installed on this host (README: "The privileged helper")');
    } finally {
      await bare.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(skip)('privileged helper: descriptors', () => {
  const open = () => readdirSync(`/proc/${system!.pid}/fd`).length;

  it('closes every descriptor a caller sends it, and each one it sent once the reply is out', async () => {
    const before = open();
    const sender = await Bus.connect(address, { unixFds: true });
    try {
      expect(sender.unixFds).toBe(true);
      for (let i = 0; i < 40; i++) {
        const fd = openSync('/dev/null', 'r');
        const err = await sender.call({ destination: HELPER_BUS_NAME, path: HELPER_PATH, interface: HELPER_INTERFACE, member: 'TapCreate', signature: 'h', body: [fd] }).catch((e: Error) => e.message);
        closeSync(fd);
        expect(err).toBe('TapCreate: org.freedesktop.portal.Error.InvalidArgument: TapCreate takes (s), got (h)');
      }
    } finally {
      sender.close();
    }
    for (let i = 0; i < 3; i++) expect(await call(USER, 'usb-open', '1-2')).toMatchObject({ ok: true });
    await new Promise((r) => setTimeout(r, 200));
    expect(open()).toBe(before);
  });
});

describe.skipIf(skip)('privileged helper: USB, against a fake sysfs (this machine has no USB controller)', () => {
  const file = (rel: string) => readFileSync(path.join(usb, rel), 'utf8');
  const WRITES = ['drivers/usb/unbind', 'drivers/usbip-host/match_busid', 'drivers/usbip-host/bind', 'drivers/usbip-host/unbind', 'drivers/usbip-host/rebind'];
  const written = () => Object.fromEntries(WRITES.map((w) => [w, file(w)]).filter(([, v]) => v !== ''));
  /** Where the kernel would point a device's driver link after a bind or unbind. */
  const driver = (busid: string, name: string) => {
    unlinkSync(path.join(usb, 'devices', busid, 'driver'));
    symlinkSync(`../../drivers/${name}`, path.join(usb, 'devices', busid, 'driver'));
  };
  beforeEach(() => {
    for (const w of WRITES) writeFileSync(path.join(usb, w), '');
  });

  it('says there is no such device, and when there is no USB bus at all', async () => {
    expect(await call(USER, 'usb-bind', '1-9')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotFound', message: `no USB device 1-9 (no ${usb}/devices/1-9)` });
    renameSync(usb, `${usb}.away`);
    try {
      expect(await call(USER, 'usb-open', '1-2')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotFound', message: `no USB device 1-2: this host has no USB bus (${usb} is absent)` });
    } finally {
      renameSync(`${usb}.away`, usb);
    }
  });

  it('refuses a hub even when a rule names its vendor, and a device no rule allows', async () => {
    const { result, line } = await oneLine(() => call(USER, 'usb-bind', '1-1'));
    expect(result).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: '1-1 is a USB hub: hubs are never handed to a VM' });
    expect(line).toMatchObject({ command: 'usb-bind', arg: '1-1', uid: USER, decision: 'refused' });
    expect(await call(USER, 'usb-bind', '1-3')).toEqual({
      ok: false,
      errorName: 'org.freedesktop.portal.Error.NotAllowed',
      message: `uid ${USER} (${userName}) may not use USB device 046d:c52b (class 03) at 1-3: ${allowList} allows this user class:08, 05e3:* only`,
    });
    expect(written()).toEqual({});
  });

  it('usb-bind does what usbip bind does and records for whom; usb-unbind gives the device back for that uid only', async () => {
    const { result, line } = await oneLine(() => call(USER, 'usb-bind', '1-2'));
    expect(result).toEqual({ ok: true });
    expect(line).toMatchObject({ command: 'usb-bind', arg: '1-2', uid: USER, decision: 'allowed', rule: `${allowList}:4: usb ${userName} class:08 05e3:* (0781:5581 (class 08) at 1-2)` });
    expect(written()).toEqual({ 'drivers/usb/unbind': '1-2', 'drivers/usbip-host/match_busid': 'add 1-2', 'drivers/usbip-host/bind': '1-2' });
    expect(readFileSync(path.join(stateDir, 'usbip-1-2'), 'utf8')).toBe(`${USER}\n0781:5581\n`);
    driver('1-2', 'usbip-host');
    try {
      expect(await call(USER, 'usb-bind', '1-2')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: '1-2 is already bound to usbip-host' });
      expect(await call(OTHER, 'usb-unbind', '1-2')).toEqual({
        ok: false,
        errorName: 'org.freedesktop.portal.Error.NotAllowed',
        message: `1-2 was bound to usbip-host for uid ${USER}, not for uid ${OTHER} (${otherName})`,
      });
      for (const w of WRITES) writeFileSync(path.join(usb, w), '');
      expect(await call(USER, 'usb-unbind', '1-2')).toEqual({ ok: true });
      expect(written()).toEqual({ 'drivers/usbip-host/unbind': '1-2', 'drivers/usbip-host/match_busid': 'del 1-2', 'drivers/usbip-host/rebind': '1-2' });
      expect(existsSync(path.join(stateDir, 'usbip-1-2'))).toBe(false);
    } finally {
      driver('1-2', 'usb');
    }
  });

  it('usb-export hands usbip-host one end of a new stream and the caller the other, for a device the helper bound for that caller only', async () => {
    const dev = (f: string) => path.join(usb, 'devices', '1-2', f);
    expect(await call(USER, 'usb-bind', '1-2')).toEqual({ ok: true });
    driver('1-2', 'usbip-host');
    writeFileSync(dev('usbip_status'), '1\n');
    writeFileSync(dev('usbip_sockfd'), '');
    try {
      expect(await call(OTHER, 'usb-export', '1-2')).toEqual({
        ok: false,
        errorName: 'org.freedesktop.portal.Error.NotAllowed',
        message: `1-2 was bound to usbip-host for uid ${USER}, not for uid ${OTHER} (${otherName})`,
      });
      expect(readFileSync(dev('usbip_sockfd'), 'utf8')).toBe('');
      const { result, line } = await oneLine(() => call(USER, 'usb-export', '1-2'));
      expect(result).toMatchObject({ ok: true, read: { socket: true, bytes: 0 } });
      expect(line).toMatchObject({ command: 'usb-export', arg: '1-2', uid: USER, decision: 'allowed', rule: expect.stringContaining(`bound for uid ${USER} (${userName}) by usb-bind (0781:5581 (class 08) at 1-2)`) });
      // What the kernel would read: the number of the helper's own end, in the helper.
      expect(readFileSync(dev('usbip_sockfd'), 'utf8')).toMatch(/^[0-9]+$/);
      // Another device in that port: usbip-host would take it, the helper does not export it.
      writeFileSync(dev('idProduct'), '5599\n');
      expect(await call(USER, 'usb-export', '1-2')).toEqual({
        ok: false,
        errorName: 'org.freedesktop.portal.Error.NotAllowed',
        message: `1-2 is 0781:5599 now, not the 0781:5581 bound for uid ${USER} (${userName}): usb-unbind it and bind it again`,
      });
      writeFileSync(dev('idProduct'), '5581\n');
      // The same model with another serial is another stick.
      writeFileSync(dev('serial'), 'OTHER-STICK\n');
      expect(await call(USER, 'usb-export', '1-2')).toMatchObject({ ok: false, message: `1-2 is 0781:5581/OTHER-STICK now, not the 0781:5581 bound for uid ${USER} (${userName}): usb-unbind it and bind it again` });
      rmSync(dev('serial'));
      writeFileSync(dev('usbip_status'), '2\n');
      expect(await call(USER, 'usb-export', '1-2')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: '1-2 is already exported on a connection: stop that one first' });
      expect(await call(USER, 'usb-unbind', '1-2')).toEqual({ ok: true });
    } finally {
      driver('1-2', 'usb');
      rmSync(dev('usbip_status'), { force: true });
      rmSync(dev('usbip_sockfd'), { force: true });
    }
    expect(await call(USER, 'usb-export', '1-4')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: '1-4 is not bound to usbip-host' });
  });

  it('usb-unbind refuses a device that is not bound to usbip-host, or that the helper did not bind', async () => {
    expect(await call(USER, 'usb-unbind', '1-4')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: '1-4 is not bound to usbip-host' });
    driver('1-4', 'usbip-host');
    try {
      expect(await call(USER, 'usb-unbind', '1-4')).toEqual({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: '1-4 was not bound to usbip-host by this helper' });
    } finally {
      driver('1-4', 'usb');
    }
    expect(written()).toEqual({});
  });

  it('says so when usbip-host is not loaded', async () => {
    renameSync(path.join(usb, 'drivers', 'usbip-host'), path.join(usb, 'drivers', 'usbip-host.away'));
    try {
      expect(await call(USER, 'usb-bind', '1-2')).toEqual({
        ok: false,
        errorName: 'org.freedesktop.portal.Error.Failed',
        message: 'the usbip-host driver is not loaded: run "modprobe usbip-host" as root, or list it in /etc/modules-load.d/',
      });
    } finally {
      renameSync(path.join(usb, 'drivers', 'usbip-host.away'), path.join(usb, 'drivers', 'usbip-host'));
    }
  });

  it('usb-open passes the caller a read-write descriptor of a node only root can open', async () => {
    const node = path.join(devUsb, '001', '003');
    const direct = await runProgram(requireProgram('setpriv'), [`--reuid=${USER}`, `--regid=${USER}`, '--clear-groups', '--', '/bin/sh', '-c', 'exec 3<>"$0"', node]).then(
      () => 'opened',
      () => 'refused',
    );
    expect(direct).toBe('refused');
    const { result, line } = await oneLine(() => call(USER, 'usb-open', '1-2'));
    expect(result).toMatchObject({ ok: true, read: { bytes: 8, hex: '0000000000000000' } });
    expect(line).toMatchObject({ command: 'usb-open', arg: '1-2', uid: USER, decision: 'allowed' });
  });

  it('usb-open refuses a node that is not the device sysfs names, and a device no rule allows', async () => {
    expect(await call(USER, 'usb-open', '1-4')).toEqual({
      ok: false,
      errorName: 'org.freedesktop.portal.Error.NotAllowed',
      message: `${path.join(devUsb, '001', '005')} is not the device node of 1-4 (1:3)`,
    });
    expect(await call(USER, 'usb-open', '1-3')).toMatchObject({ ok: false, errorName: 'org.freedesktop.portal.Error.NotAllowed', message: expect.stringMatching(/may not use USB device 046d:c52b/) });
  });
});
