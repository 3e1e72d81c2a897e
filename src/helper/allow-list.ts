import { closeSync, constants, fstatSync, openSync, readSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../config/load.js';
import { bridgeNameProblem, printable } from './commands.js';

/**
 * The admin's allow list, /etc/xdp-vm/helper.conf: who may have taps on which
 * bridges, and which USB devices. One rule a line, `#` comments:
 *
 *     bridge WHO BRIDGE...     e.g.  bridge alice br0 virbr0
 *     usb    WHO MATCH...      e.g.  usb @plugdev 046d:c52b 0781:* class:08
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
export interface UsbRule {
  line: number;
  subject: Subject;
  matches: UsbMatch[];
}
export interface AllowList {
  file: string;
  bridges: BridgeRule[];
  usb: UsbRule[];
}

const USER = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/;
const UID = /^(0|[1-9][0-9]{0,9})$/;
const USB_ID = /^([0-9a-f]{4}):([0-9a-f]{4}|\*)$/;
const USB_CLASS = /^class:([0-9a-f]{2})$/;

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
  const list: AllowList = { file, bridges: [], usb: [] };
  const problems: string[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const words = raw.replace(/#.*/, '').trim().split(/[ \t]+/).filter(Boolean);
    if (words.length === 0) return;
    const [kind, who, ...values] = words as [string, string | undefined, ...string[]];
    const problem = (msg: string) => problems.push(`line ${line}: ${msg}`);
    if (kind !== 'bridge' && kind !== 'usb') return problem(`unknown rule "${printable(kind)}": a rule is "bridge WHO BRIDGE..." or "usb WHO MATCH..."`);
    if (who === undefined) return problem(`"${kind}" names nobody: ${kind} WHO ${kind === 'bridge' ? 'BRIDGE' : 'MATCH'}...`);
    const subject = parseSubject(who);
    if (typeof subject === 'string') return problem(subject);
    if (values.length === 0) return problem(`"${kind} ${who}" names no ${kind === 'bridge' ? 'bridge' : 'device'}`);
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
