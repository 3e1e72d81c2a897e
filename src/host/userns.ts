import { accessSync, constants, existsSync, readFileSync } from 'node:fs';

/**
 * What an unprivileged virtiofsd needs: a user namespace with the user's
 * subordinate ids, mapped so that the guest sees the user's files as the
 * user's own. Pure functions over file contents, so `xdp-vm doctor` and the
 * unit tests share them with the supervisor (src/host/virtiofsd.ts).
 *
 * The mapping. Inside the namespace the user keeps their own uid and gid
 * (1000 stays 1000), and every other id from 0 to 65535 is one of the user's
 * subordinate ids from /etc/subuid and /etc/subgid:
 *
 *     inside            outside
 *     0 … own-1     →   sub … sub+own-1
 *     own           →   own            (the user)
 *     own+1 … 65535 →   sub+own … sub+65534
 *
 * virtiofsd reports owners as its namespace sees them, so the guest sees the
 * user's files owned by the user's uid, exactly as a virtiofsd run as root
 * shows them, and a guest user with that uid (1000 on both sides, the usual
 * case) owns its documents and writes them. `--map-root-user` would show them
 * owned by root instead, and a guest's ordinary user could then not write.
 *
 * virtiofsd runs as the user inside the namespace (its real, effective and
 * saved uid are the user's), with the namespace's capabilities kept as
 * ambient capabilities. That is also what the document store's FUSE mount
 * requires: it admits only processes whose uids and gids all equal the
 * mount's owner.
 */
export interface SubIdRange {
  start: number;
  count: number;
}

/** One line of a uid_map or gid_map: `inside outside count`. */
export interface IdMapLine {
  inside: number;
  outside: number;
  count: number;
}

/** How many ids the namespace covers, 0 to 65535: what a Debian guest hands out. */
export const NAMESPACE_IDS = 65536;

/** The ranges /etc/subuid (or /etc/subgid) gives `user`, by name or by number, in file order. */
export function subIdRanges(contents: string, user: { name: string; id: number }): SubIdRange[] {
  const out: SubIdRange[] = [];
  for (const raw of contents.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [owner, start, count] = line.split(':');
    if (owner !== user.name && owner !== String(user.id)) continue;
    const s = Number(start);
    const c = Number(count);
    if (Number.isSafeInteger(s) && Number.isSafeInteger(c) && s >= 0 && c > 0) out.push({ start: s, count: c });
  }
  return out;
}

/** The range to map from: the first one big enough for the whole namespace, else the biggest. */
export function pickRange(ranges: readonly SubIdRange[]): SubIdRange | undefined {
  return ranges.find((r) => r.count >= NAMESPACE_IDS - 1) ?? [...ranges].sort((a, b) => b.count - a.count)[0];
}

/** The namespace's map for one kind of id: the user's own id kept, the rest from `range`. */
export function idMap(own: number, range: SubIdRange, size = NAMESPACE_IDS): IdMapLine[] {
  const lines: IdMapLine[] = [];
  let next = range.start;
  let left = range.count;
  const below = Math.min(own, size, left);
  if (below > 0) {
    lines.push({ inside: 0, outside: next, count: below });
    next += below;
    left -= below;
  }
  lines.push({ inside: own, outside: own, count: 1 });
  const above = own < size ? Math.min(size - own - 1, left) : 0;
  if (above > 0) lines.push({ inside: own + 1, outside: next, count: above });
  return lines;
}

/** newuidmap's and newgidmap's arguments after the pid. */
export function mapArgs(lines: readonly IdMapLine[]): string[] {
  return lines.flatMap((l) => [String(l.inside), String(l.outside), String(l.count)]);
}

/** Whether `own` lies inside `range`: newuidmap refuses a map whose outside ids overlap. */
function overlaps(own: number, range: SubIdRange): boolean {
  return own >= range.start && own < range.start + range.count;
}

export interface UserIds {
  name: string;
  uid: number;
  gid: number;
}

export interface NamespaceMaps {
  uid: IdMapLine[];
  gid: IdMapLine[];
}

export class UserNamespaceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserNamespaceError';
  }
}

/** The uid and gid maps for `user`, or why there can be none, with the fix. */
export function namespaceMaps(user: UserIds, subuid: string | undefined, subgid: string | undefined): NamespaceMaps {
  const uidRange = pickRange(subIdRanges(subuid ?? '', { name: user.name, id: user.uid }));
  const gidRange = pickRange(subIdRanges(subgid ?? '', { name: user.name, id: user.gid }));
  const fix = `run: ${subIdFix(user.name, subuid ?? '', subgid ?? '')}`;
  if (!uidRange) throw new UserNamespaceError(`${user.name} has no subordinate uid range in /etc/subuid, which an unprivileged virtiofsd needs; ${fix}`);
  if (!gidRange) throw new UserNamespaceError(`${user.name} has no subordinate gid range in /etc/subgid, which an unprivileged virtiofsd needs; ${fix}`);
  if (overlaps(user.uid, uidRange)) throw new UserNamespaceError(`${user.name}'s own uid ${user.uid} lies inside its subordinate uid range ${uidRange.start}+${uidRange.count} in /etc/subuid; give it a range that does not contain it`);
  if (overlaps(user.gid, gidRange)) throw new UserNamespaceError(`${user.name}'s own gid ${user.gid} lies inside its subordinate gid range ${gidRange.start}+${gidRange.count} in /etc/subgid; give it a range that does not contain it`);
  return { uid: idMap(user.uid, uidRange), gid: idMap(user.gid, gidRange) };
}

/** A free block of `count` ids at or above 100000 (useradd's SUB_UID_MIN) in both files. */
export function freeSubIdRange(subuid: string, subgid: string, count = NAMESPACE_IDS): SubIdRange {
  const taken: SubIdRange[] = [];
  for (const contents of [subuid, subgid]) {
    for (const raw of contents.split('\n')) {
      const [, start, n] = raw.trim().split(':');
      const s = Number(start);
      const c = Number(n);
      if (Number.isSafeInteger(s) && Number.isSafeInteger(c) && c > 0) taken.push({ start: s, count: c });
    }
  }
  let start = 100_000;
  for (const r of taken.sort((a, b) => a.start - b.start)) {
    if (r.start < start + count && start < r.start + r.count) start = r.start + r.count;
  }
  return { start, count };
}

/** The command that gives `user` subordinate ids. */
export function subIdFix(user: string, subuid: string, subgid: string): string {
  const r = freeSubIdRange(subuid, subgid);
  const span = `${r.start}-${r.start + r.count - 1}`;
  return `sudo usermod --add-subuids ${span} --add-subgids ${span} ${user}`;
}

/** One line of `xdp-vm doctor`. */
export interface Check {
  what: string;
  ok: boolean;
  found?: string;
  fix?: string;
}

/** What the checks read from the machine; undefined where a file is absent. */
export interface UsernsFacts {
  user: UserIds;
  subuid: string | undefined;
  subgid: string | undefined;
  /** /proc/sys/kernel/unprivileged_userns_clone (Debian's kernels; absent upstream). */
  unprivilegedUsernsClone: string | undefined;
  /** /proc/sys/user/max_user_namespaces */
  maxUserNamespaces: string | undefined;
  /** /proc/sys/kernel/apparmor_restrict_unprivileged_userns (Ubuntu 23.10+). */
  apparmorRestrict: string | undefined;
  /** Whether this user may open /dev/fuse read-write. */
  fuseUsable: boolean;
  fuseExists: boolean;
}

const SYSCTL_DROP_IN = '/etc/sysctl.d/50-xdp-vm-userns.conf';

/**
 * The checks for an unprivileged virtiofsd (newuidmap and newgidmap are
 * checked with the other programs), each with its fix.
 */
export function usernsChecks(f: UsernsFacts): Check[] {
  const checks: Check[] = [];
  const uidRanges = subIdRanges(f.subuid ?? '', { name: f.user.name, id: f.user.uid });
  const gidRanges = subIdRanges(f.subgid ?? '', { name: f.user.name, id: f.user.gid });
  const fix = subIdFix(f.user.name, f.subuid ?? '', f.subgid ?? '');
  for (const [kind, file, ranges] of [['uid', '/etc/subuid', uidRanges], ['gid', '/etc/subgid', gidRanges]] as const) {
    const best = pickRange(ranges);
    const own = kind === 'uid' ? f.user.uid : f.user.gid;
    const what = `subordinate ${kind}s for ${f.user.name} in ${file} (virtiofsd's user namespace; ${NAMESPACE_IDS - 1} wanted)`;
    if (!best) checks.push({ what, ok: false, fix });
    else if (overlaps(own, best))
      checks.push({ what, ok: false, found: `${best.start}+${best.count}`, fix: `the range contains ${f.user.name}'s own ${kind} ${own}, which newuidmap refuses; replace it: ${fix}` });
    else if (best.count < NAMESPACE_IDS - 1)
      checks.push({ what, ok: false, found: `${best.start}+${best.count}`, fix: `only ${best.count} ids: guest ${kind}s above ${best.count} would be unmapped; ${fix}` });
    else checks.push({ what, ok: true, found: `${best.start}+${best.count}` });
  }
  const clone = f.unprivilegedUsernsClone?.trim();
  if (clone !== undefined) {
    const ok = clone !== '0';
    checks.push({
      what: 'unprivileged user namespaces (kernel.unprivileged_userns_clone)',
      ok,
      found: clone,
      fix: ok ? undefined : `sudo sysctl -w kernel.unprivileged_userns_clone=1, and keep it: echo kernel.unprivileged_userns_clone=1 | sudo tee ${SYSCTL_DROP_IN}`,
    });
  }
  const max = Number(f.maxUserNamespaces?.trim());
  const maxOk = f.maxUserNamespaces === undefined ? false : Number.isFinite(max) && max > 0;
  checks.push({
    what: 'user namespaces allowed (user.max_user_namespaces > 0)',
    ok: maxOk,
    found: f.maxUserNamespaces?.trim(),
    fix: maxOk
      ? undefined
      : f.maxUserNamespaces === undefined
        ? 'this kernel has no user namespaces (CONFIG_USER_NS); use a kernel built with them, as Debian\'s are'
        : `sudo sysctl -w user.max_user_namespaces=15000, and keep it: echo user.max_user_namespaces=15000 | sudo tee -a ${SYSCTL_DROP_IN}`,
  });
  const aa = f.apparmorRestrict?.trim();
  if (aa !== undefined && aa !== '0') {
    checks.push({
      what: 'AppArmor lets unconfined programs create user namespaces (kernel.apparmor_restrict_unprivileged_userns)',
      ok: false,
      found: aa,
      fix: 'give unshare an AppArmor profile with "userns," (see apparmor.d(5)), or: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0',
    });
  }
  checks.push({
    what: `FUSE device /dev/fuse usable by ${f.user.name} (document store and its virtiofsd)`,
    ok: f.fuseUsable,
    fix: f.fuseUsable
      ? undefined
      : f.fuseExists
        ? 'Debian\'s udev makes /dev/fuse 0666; where no udev runs: sudo chmod 0666 /dev/fuse'
        : 'sudo apt-get install fuse3, and load the fuse module: sudo modprobe fuse',
  });
  return checks;
}

function readIfExists(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function usable(file: string): boolean {
  try {
    accessSync(file, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** The facts for this process's own user, read from the machine. */
export function readUsernsFacts(user: UserIds): UsernsFacts {
  return {
    user,
    subuid: readIfExists('/etc/subuid'),
    subgid: readIfExists('/etc/subgid'),
    unprivilegedUsernsClone: readIfExists('/proc/sys/kernel/unprivileged_userns_clone'),
    maxUserNamespaces: readIfExists('/proc/sys/user/max_user_namespaces'),
    apparmorRestrict: readIfExists('/proc/sys/kernel/apparmor_restrict_unprivileged_userns'),
    fuseUsable: usable('/dev/fuse'),
    fuseExists: existsSync('/dev/fuse'),
  };
}

/** The subordinate-id files, for the supervisor. */
export function readSubIds(): { subuid: string | undefined; subgid: string | undefined } {
  return { subuid: readIfExists('/etc/subuid'), subgid: readIfExists('/etc/subgid') };
}
