import { chownSync, lstatSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import path from 'node:path';
import { requireProgram } from '../deps.js';

/**
 * A host session run as an ordinary user, as it runs on a desktop, from a
 * test process that is root (CI): the user, and a command line that drops to
 * it. scripts/setup.sh creates the user, with a subordinate id range.
 */
export interface SessionUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** The ordinary user the tests run host sessions as (scripts/setup.sh creates it). */
export const TEST_USER = process.env.XDP_VM_TEST_USER ?? 'xdpvm-test';

/** `name` from /etc/passwd, or why it cannot be used. */
export function lookupUser(name: string, passwd = readFileSync('/etc/passwd', 'utf8')): SessionUser {
  for (const line of passwd.split('\n')) {
    const [user, , uid, gid, , home] = line.split(':');
    if (user === name) return { name, uid: Number(uid), gid: Number(gid), home: home ?? '/' };
  }
  throw new Error(`no user ${name} in /etc/passwd; scripts/setup.sh tests creates it (run it as root)`);
}

/** The user this process runs as. */
export function currentUser(): SessionUser {
  const me = userInfo();
  return { name: me.username, uid: me.uid, gid: me.gid, home: me.homedir };
}

/**
 * Who a test's host session runs as: the test user when the tests are root
 * (CI), as the host daemon never runs as root; otherwise the user running them.
 */
export function sessionUser(): SessionUser {
  return process.getuid?.() === 0 ? lookupUser(TEST_USER) : currentUser();
}

/**
 * `file args` run as `user` (its uid, its gid and its groups) through
 * setpriv, which execs the program, so the pid stays the program's. With no
 * user, or when this process already is that user, the command is unchanged.
 */
export function asUser(user: SessionUser | undefined, file: string, args: readonly string[]): [string, string[]] {
  if (!user || user.uid === process.getuid?.()) return [file, [...args]];
  return [requireProgram('setpriv'), ['--reuid', String(user.uid), '--regid', String(user.gid), '--init-groups', '--', file, ...args]];
}

/** Give `dir` and everything under it to `user` (not following links, not entering other mounts). */
export function chownTree(dir: string, user: SessionUser): void {
  const dev = lstatSync(dir).dev;
  const walk = (p: string) => {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      return; // a user's FUSE mount refuses root even a stat
    }
    if (st.dev !== dev) return;
    chownSync(p, user.uid, user.gid);
    if (st.isDirectory()) for (const e of readdirSync(p)) walk(path.join(p, e));
  };
  walk(dir);
}

/**
 * Sockets a root process (a test's QEMU, libvirt's) creates, handed to `user`
 * as they appear, as they would be the user's had the user started that VMM:
 * the daemon, running as the user, connects to them. Returns the stop.
 */
export function handSocketsTo(user: SessionUser, sockets: readonly string[]): () => void {
  if (user.uid === process.getuid?.()) return () => undefined;
  const hand = () => {
    for (const s of sockets) {
      try {
        if (statSync(s).uid !== user.uid) chownSync(s, user.uid, user.gid);
      } catch {
        /* not there yet */
      }
    }
  };
  const timer = setInterval(hand, 20);
  return () => {
    clearInterval(timer);
    hand();
  };
}
