import type { AllowList, Subject, UsbMatch, VmOnlyRule } from './allow-list.js';

/**
 * The decisions, pure: a caller, what they ask for, the allow list and the
 * facts read from the system go in; allowed (with the rule that allowed it)
 * or refused (with why, in words) comes out. Nothing here reads a file.
 */
export interface Caller {
  uid: number;
  /** From the user database; undefined for a uid with no entry. */
  user: string | undefined;
  groups: readonly string[];
}

export type Decision = { allowed: true; rule: string } | { allowed: false; reason: string };

export function describeCaller(c: Caller): string {
  return c.user === undefined ? `uid ${c.uid}` : `uid ${c.uid} (${c.user})`;
}

export function subjectMatches(s: Subject, c: Caller): boolean {
  if (s.kind === 'uid') return s.uid === c.uid;
  if (s.kind === 'user') return s.name === c.user;
  return c.groups.includes(s.name);
}

function subjectText(s: Subject): string {
  return s.kind === 'uid' ? String(s.uid) : s.kind === 'user' ? s.name : `@${s.name}`;
}

const vmOnlyText = (list: AllowList, r: VmOnlyRule) => `${list.file}:${r.line}: vm-only ${subjectText(r.subject)} ${r.bridge} ${r.address}/${r.prefix}`;

/** A tap on `bridge`: allowed by a bridge rule, or by a vm-only rule naming it. */
export function decideBridge(list: AllowList, caller: Caller, bridge: string): Decision {
  const mine = list.bridges.filter((r) => subjectMatches(r.subject, caller));
  const rule = mine.find((r) => r.bridges.includes(bridge));
  if (rule) return { allowed: true, rule: `${list.file}:${rule.line}: bridge ${subjectText(rule.subject)} ${rule.bridges.join(' ')}` };
  const vmOnly = list.vmOnly.filter((r) => subjectMatches(r.subject, caller));
  const own = vmOnly.find((r) => r.bridge === bridge);
  if (own) return { allowed: true, rule: vmOnlyText(list, own) };
  const allowed = [...new Set([...mine.flatMap((r) => r.bridges), ...vmOnly.map((r) => r.bridge)])];
  return {
    allowed: false,
    reason: `${describeCaller(caller)} may not use bridge ${bridge}: ${
      allowed.length ? `${list.file} allows this user ${allowed.join(', ')} only` : `no "bridge" or "vm-only" rule in ${list.file} names this user or their groups`
    }`,
  };
}

/** Creating the vm-only bridge `bridge`: allowed with the address the admin gave it, or refused. */
export function decideVmOnly(list: AllowList, caller: Caller, bridge: string): (Decision & { allowed: false }) | { allowed: true; rule: string; address: string; prefix: number } {
  const mine = list.vmOnly.filter((r) => subjectMatches(r.subject, caller));
  const rule = mine.find((r) => r.bridge === bridge);
  if (rule) return { allowed: true, rule: vmOnlyText(list, rule), address: rule.address, prefix: rule.prefix };
  return {
    allowed: false,
    reason: `${describeCaller(caller)} may not bring up vm-only bridge ${bridge}: ${
      mine.length ? `${list.file} gives this user vm-only ${mine.map((r) => r.bridge).join(', ')} only` : `no "vm-only" rule in ${list.file} names this user or their groups`
    }`,
  };
}

/** A USB device as sysfs describes it; ids and classes in lowercase hex. */
export interface UsbDevice {
  busid: string;
  vendor: string;
  product: string;
  deviceClass: string;
  interfaceClasses: readonly string[];
}

export const HUB_CLASS = '09';

/**
 * The classes a device is judged by: its own, or for a device that declares
 * its class per interface (00, and ef for composite devices) every
 * interface's, so a "storage" stick with a keyboard interface is not storage.
 */
export function effectiveClasses(d: UsbDevice): string[] {
  const perInterface = (d.deviceClass === '00' || d.deviceClass === 'ef') && d.interfaceClasses.length > 0;
  return [...new Set(perInterface ? d.interfaceClasses : [d.deviceClass])];
}

function matchText(m: UsbMatch): string {
  return m.kind === 'id' ? `${m.vendor}:${m.product}` : `class:${m.code}`;
}

export function describeDevice(d: UsbDevice): string {
  return `${d.vendor}:${d.product} (class ${effectiveClasses(d).join('+')}) at ${d.busid}`;
}

export function decideUsb(list: AllowList, caller: Caller, d: UsbDevice): Decision {
  if (d.deviceClass === HUB_CLASS || d.interfaceClasses.includes(HUB_CLASS)) {
    return { allowed: false, reason: `${d.busid} is a USB hub: hubs are never handed to a VM` };
  }
  const mine = list.usb.filter((r) => subjectMatches(r.subject, caller));
  const rule = (r: (typeof mine)[number]) => `${list.file}:${r.line}: usb ${subjectText(r.subject)} ${r.matches.map(matchText).join(' ')}`;
  const byId = mine.find((r) => r.matches.some((m) => m.kind === 'id' && m.vendor === d.vendor && (m.product === '*' || m.product === d.product)));
  if (byId) return { allowed: true, rule: rule(byId) };
  const classes = effectiveClasses(d);
  const allowedClasses = new Set(mine.flatMap((r) => r.matches.flatMap((m) => (m.kind === 'class' ? [m.code] : []))));
  if (classes.every((c) => allowedClasses.has(c))) {
    // Name the rules that together allow it.
    const used = mine.filter((r) => r.matches.some((m) => m.kind === 'class' && classes.includes(m.code)));
    return { allowed: true, rule: used.map(rule).join('; ') };
  }
  const own = [...new Set(mine.flatMap((r) => r.matches.map(matchText)))];
  return {
    allowed: false,
    reason: `${describeCaller(caller)} may not use USB device ${describeDevice(d)}: ${
      own.length ? `${list.file} allows this user ${own.join(', ')} only` : `no "usb" rule in ${list.file} names this user or their groups`
    }`,
  };
}
