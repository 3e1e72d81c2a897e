import { closeSync, constants, fstatSync, openSync, readSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../config/load.js';
import { bridgeNameProblem, printable } from './commands.js';

/**
 * The admin's allow list, /etc/xdp-vm/helper.conf: who may have taps on which
 * bridges, and which USB devices. One rule a line, `#` comments:
 *
 *     bridge  WHO BRIDGE...        e.g.  bridge alice br0 virbr0
 *     vm-only WHO BRIDGE ADDR/LEN  e.g.  vm-only alice xdpvm-lab 10.77.0.1/24
 *     usb     WHO MATCH...         e.g.  usb @plugdev 046d:c52b 0781:* class:08
 *
 * A vm-only rule lets WHO have the helper create BRIDGE (no uplink), give the
 * host ADDR on it and serve DHCP there, and put taps on it. The address is
 * the admin's to choose, never the caller's: a user who could pick it could
 * shadow a route the host relies on.
 *
 * WHO is a user name, a numeric uid or @group. Anything not allowed is denied,
 * and a file with any error allows nothing: one bad line is a typo in a
 * security policy, so the whole file is refused, each problem named by line.
 */
export const DEFAULT_ALLOW_LIST = '/etc/xdp-vm/helper.conf';
const MAX_BYTES = 64 * 1024;

export type Subject = { kind: 'user'; name: string } | { kind: 'uid'; uid: number } | { kind: 'group'; name: string };
export type UsbMatch = { kind: 'id'; vendor: string; product: string } | { kind: 'class'; code: string };

export interface BridgeRule {
  line: number;
  subject: Subject;
  bridges: string[];
}
export interface VmOnlyRule {
  line: number;
  subject: Subject;
  bridge: string;
  /** The host's address on the bridge, dotted quad, and the prefix length. */
  address: string;
  prefix: number;
}
export interface UsbRule {
  line: number;
  subject: Subject;
  matches: UsbMatch[];
}
export interface AllowList {
  file: string;
  bridges: BridgeRule[];
  vmOnly: VmOnlyRule[];
  usb: UsbRule[];
}

const USER = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/;
const UID = /^(0|[1-9][0-9]{0,9})$/;
const USB_ID = /^([0-9a-f]{4}):([0-9a-f]{4}|\*)$/;
const USB_CLASS = /^class:([0-9a-f]{2})$/;
const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
/** /16 to /30: room for DHCP, and no rule that swallows a /8. */
const CIDR = new RegExp(`^(${OCTET}(\\.${OCTET}){3})/(1[6-9]|2[0-9]|30)$`);

function parseCidr(word: string): { address: string; prefix: number } | string {
  const m = CIDR.exec(word);
  if (!m) return `"${printable(word)}" is not an address for the bridge: A.B.C.D/LEN with LEN 16 to 30, e.g. 10.77.0.1/24`;
  const address = m[1]!;
  const prefix = Number(word.slice(word.indexOf('/') + 1));
  const { network, broadcast, host } = ipv4Range(address, prefix);
  if (host === network || host === broadcast) return `${word} is the ${host === network ? 'network' : 'broadcast'} address of its subnet, not a host's`;
  const first = address.split('.').map(Number)[0]!;
  if (first === 0 || first === 127 || first >= 224) return `${word} is not a unicast address a bridge can have`;
  return { address, prefix };
}

/** The subnet `address/prefix` is in, as 32-bit numbers. */
export function ipv4Range(address: string, prefix: number): { host: number; network: number; broadcast: number } {
  const host = address.split('.').reduce((n, o) => n * 256 + Number(o), 0);
  const size = 2 ** (32 - prefix);
  const network = host - (host % size);
  return { host, network, broadcast: network + size - 1 };
}

export function ipv4Text(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

function parseSubject(word: string): Subject | string {
  if (word.startsWith('@')) return USER.test(word.slice(1)) ? { kind: 'group', name: word.slice(1) } : `"${printable(word)}" is not a group: @ then a group name`;
  if (UID.test(word)) return Number(word) <= 0xfffffffe ? { kind: 'uid', uid: Number(word) } : `uid ${word} is out of range`;
  if (USER.test(word)) return { kind: 'user', name: word };
  return `"${printable(word)}" is not a user name, a uid or @group`;
}

function parseUsbMatch(word: string): UsbMatch | string {
  const lower = word.toLowerCase();
  const id = USB_ID.exec(lower);
  if (id) return { kind: 'id', vendor: id[1]!, product: id[2]! };
  const cls = USB_CLASS.exec(lower);
  if (cls) return cls[1] === '09' ? 'class:09 is hubs, and hubs are never handed to a VM' : { kind: 'class', code: cls[1]! };
  return `"${printable(word)}" is not a USB match: VVVV:PPPP, VVVV:* or class:CC, in hex`;
}

export function parseAllowList(text: string, file: string): AllowList {
  const list: AllowList = { file, bridges: [], vmOnly: [], usb: [] };
  const problems: string[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const words = raw.replace(/#.*/, '').trim().split(/[ \t]+/).filter(Boolean);
    if (words.length === 0) return;
    const [kind, who, ...values] = words as [string, string | undefined, ...string[]];
    const problem = (msg: string) => problems.push(`line ${line}: ${msg}`);
    if (kind !== 'bridge' && kind !== 'usb' && kind !== 'vm-only') return problem(`unknown rule "${printable(kind)}": a rule is "bridge WHO BRIDGE...", "vm-only WHO BRIDGE ADDR/LEN" or "usb WHO MATCH..."`);
    const form = kind === 'bridge' ? 'BRIDGE...' : kind === 'vm-only' ? 'BRIDGE ADDR/LEN' : 'MATCH...';
    if (who === undefined) return problem(`"${kind}" names nobody: ${kind} WHO ${form}`);
    const subject = parseSubject(who);
    if (typeof subject === 'string') return problem(subject);
    if (values.length === 0) return problem(`"${kind} ${who}" names no ${kind === 'usb' ? 'device' : 'bridge'}`);
    if (kind === 'vm-only') {
      if (values.length !== 2) return problem(`"vm-only" takes one bridge and the host's address on it: vm-only WHO ${form}`);
      const [bridge, cidr] = values as [string, string];
      if (bridgeNameProblem(bridge)) return problem(`"${printable(bridge)}" is not a bridge name: ${bridgeNameProblem(bridge)}`);
      const parsed = parseCidr(cidr);
      if (typeof parsed === 'string') return problem(parsed);
      const other = list.vmOnly.find((r) => r.bridge === bridge && (r.address !== parsed.address || r.prefix !== parsed.prefix));
      if (other) return problem(`vm-only bridge ${bridge} is given ${cidr} here but ${other.address}/${other.prefix} on line ${other.line}: one bridge has one address`);
      list.vmOnly.push({ line, subject, bridge, ...parsed });
      return;
    }
    if (kind === 'bridge') {
      const bad = values.find((b) => bridgeNameProblem(b));
      if (bad !== undefined) return problem(`"${printable(bad)}" is not a bridge name: ${bridgeNameProblem(bad)}`);
      list.bridges.push({ line, subject, bridges: values });
    } else {
      const matches = values.map(parseUsbMatch);
      const bad = matches.find((m) => typeof m === 'string');
      if (bad !== undefined) return problem(bad);
      list.usb.push({ line, subject, matches: matches as UsbMatch[] });
    }
  });
  for (const r of list.vmOnly) {
    const existing = list.bridges.find((b) => b.bridges.includes(r.bridge));
    if (existing) problems.push(`line ${r.line}: ${r.bridge} is a vm-only bridge here but an existing bridge on line ${existing.line}: the helper makes vm-only bridges itself, so one name cannot be both`);
  }
  if (problems.length) throw new ConfigError(file, problems);
  return list;
}

/** What makes a file or directory unfit to hold root's policy, or undefined. Pure, for the tests. */
export function ownershipProblem(what: string, st: { uid: number; mode: number }, isDirectory: boolean): string | undefined {
  if (st.uid !== 0) return `${what} is owned by uid ${st.uid}, not root`;
  // A sticky directory (/tmp) lets others add files but not replace root's.
  const sticky = isDirectory && (st.mode & 0o1000) !== 0;
  if ((st.mode & 0o022) !== 0 && !sticky) return `${what} is writable by ${st.mode & 0o020 ? 'its group' : 'others'} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
  return undefined;
}

/**
 * Read and parse the allow list, refusing one that anyone but root could have
 * written: the file (checked on the descriptor read) and every directory above it.
 */
export function readAllowList(file: string = DEFAULT_ALLOW_LIST): AllowList {
  const refuse = (problem: string) => new ConfigError(file, [`${problem}; every request is refused until it is fixed`]);
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw refuse(code === 'ENOENT' ? 'no such file: nothing is allowed (default deny); see data/helper.conf for the format' : `cannot open: ${(err as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw refuse('not a regular file');
    const problem = ownershipProblem('the file', st, false);
    if (problem) throw refuse(problem);
    for (let dir = path.dirname(realpathSync(file)); ; dir = path.dirname(dir)) {
      const dirProblem = ownershipProblem(`its directory ${dir}`, statSync(dir), true);
      if (dirProblem) throw refuse(dirProblem);
      if (dir === '/') break;
    }
    if (st.size > MAX_BYTES) throw refuse(`larger than ${MAX_BYTES} bytes`);
    const buf = Buffer.alloc(MAX_BYTES + 1);
    let n = 0;
    for (let r; n < buf.length && (r = readSync(fd, buf, n, buf.length - n, null)) > 0; ) n += r;
    if (n > MAX_BYTES) throw refuse(`larger than ${MAX_BYTES} bytes`);
    return parseAllowList(buf.subarray(0, n).toString('utf8'), file);
  } finally {
    closeSync(fd);
  }
}
