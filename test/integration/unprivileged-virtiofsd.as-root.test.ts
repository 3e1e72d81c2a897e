import { mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runProgram } from '../../src/exec.js';
import { findVirtiofsd } from '../../src/host/virtiofsd.js';
import { namespaceMaps, readSubIds, type IdMapLine } from '../../src/host/userns.js';
import { packageRoot } from '../../src/paths.js';
import { asUser, chownTree, TEST_USER, type SessionUser } from '../../src/testbed/as-user.js';
import { World } from '../../src/testbed/world.js';

/**
 * The host daemon as an ordinary user, as its systemd user unit runs it: the
 * whole host session (bus, portals, document store, daemon) runs as the test
 * user, and the daemon's virtiofsd runs unprivileged, in a user namespace
 * that keeps the user's own uid and gid. What the guest sees through it is
 * test/e2e/unprivileged.test.ts; here, the processes, the files, and the
 * supervisor's promises (adopt it, outlive the daemon, fail closed).
 */
const USER_VIRTIOFSD = path.join(packageRoot(), 'dist', 'src', 'testbed', 'user-virtiofsd.js');
const notRoot = process.getuid?.() !== 0;

let world: World;
let user: SessionUser;

beforeAll(async () => {
  world = await World.start([{ name: 'work' }], { asUser: TEST_USER });
  user = world.user!;
});
afterAll(async () => {
  await world?.stop();
});

function status(pid: number): Record<string, string> {
  return Object.fromEntries(
    readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]),
  );
}

function idMapOf(pid: number, kind: 'uid' | 'gid'): IdMapLine[] {
  return readFileSync(`/proc/${pid}/${kind}_map`, 'utf8')
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).map(Number))
    .map(([inside, outside, count]) => ({ inside: inside!, outside: outside!, count: count! }));
}

const expectedMaps = () => {
  const { subuid, subgid } = readSubIds();
  return namespaceMaps(user, subuid, subgid);
};

/** The same supervisor the daemon uses, run as `who` for any folder. */
async function startFolderShare(who: SessionUser | undefined, source: string, socket: string): Promise<{ pid?: number; state: string; detail: string; unprivileged?: boolean }> {
  const { stdout } = await runProgram(...asUser(who, process.execPath, [USER_VIRTIOFSD, '--source', source, '--socket', socket, '--log', path.join(path.dirname(socket), 'folder-virtiofsd.log')]), {
    env: { XDP_VM_LOG_LEVEL: 'warn' },
    timeoutMs: 20_000,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as { pid?: number; state: string; detail: string; unprivileged?: boolean };
}

function expectUnprivileged(pid: number): void {
  const st = status(pid);
  expect(st.Uid!).toBe(`${user.uid}\t${user.uid}\t${user.uid}\t${user.uid}`);
  expect(st.Gid!).toBe(`${user.gid}\t${user.gid}\t${user.gid}\t${user.gid}`);
  expect(readlinkSync(`/proc/${pid}/ns/user`)).not.toBe(readlinkSync('/proc/self/ns/user'));
  expect(idMapOf(pid, 'uid')).toEqual(expectedMaps().uid);
  expect(idMapOf(pid, 'gid')).toEqual(expectedMaps().gid);
  // The namespace's capabilities, kept across exec as ambient ones: virtiofsd sets up its sandbox with them.
  expect(BigInt(`0x${st.CapEff}`)).not.toBe(0n);
}

describe.skipIf(notRoot)('an unprivileged host session and its virtiofsd', () => {
  it('runs the daemon and the document store as the user', () => {
    expect(status(world.daemon!.pid!).Uid!.split('\t')).toEqual(Array(4).fill(String(user.uid)));
    const mount = readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === world.docMount);
    expect(mount).toMatch(new RegExp(`^portal \\S+ fuse\\.portal \\S*user_id=${user.uid},group_id=${user.gid}`));
    // No allow_other: the store's mount admits the user's processes only, so virtiofsd must be one.
    expect(mount).not.toMatch(/allow_other/);
  });

  it('starts the VM\'s virtiofsd as the user, in a user namespace that keeps the user\'s uid and gid', async () => {
    const socket = world.vmPaths('work').share;
    const pid = findVirtiofsd(socket)!;
    expect(pid).toBeDefined();
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    expect(argv).toEqual(['/usr/lib/qemu/virtiofsd', `--socket-path=${socket}`, '-o', `source=${world.viewOf('work')}`, '-o', 'cache=none', '-o', 'log_level=warn']);
    expectUnprivileged(pid);
    expect(expectedMaps().uid).toContainEqual({ inside: user.uid, outside: user.uid, count: 1 });
    // The socket is where the VMM looks, and the user's: a QEMU run by the same user connects.
    const sock = statSync(socket);
    expect(sock.isSocket()).toBe(true);
    expect([sock.uid, sock.gid, sock.mode & 0o777]).toEqual([user.uid, user.gid, 0o700]);
    // Its pid file went to the user's folder that stands in for /var/run in its namespace.
    const pidFile = path.join(path.dirname(socket), 'virtiofsd-var', 'run', 'virtiofsd', `${socket.replaceAll('/', '.')}.pid`);
    expect(readFileSync(pidFile, 'utf8').trim()).toBe(String(pid));
    expect(statSync(pidFile).uid).toBe(user.uid);
    const { vms } = JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { name: string; share: string }[] };
    expect(vms).toEqual([expect.objectContaining({ name: 'work', share: 'ready' })]);
  });

  it('leaves it running when the daemon stops, and a new daemon adopts it by its command line', async () => {
    const socket = world.vmPaths('work').share;
    const pid = findVirtiofsd(socket)!;
    await world.stopDaemon();
    expect(findVirtiofsd(socket)).toBe(pid);
    world.daemonLog.length = 0;
    await world.startDaemon();
    expect(findVirtiofsd(socket)).toBe(pid);
    expect(world.daemonLog.join('\n')).toMatch(/adopted the virtiofsd still serving this VM's share/);
    const { vms } = JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { share: string; detail: string }[] };
    expect(vms[0]).toMatchObject({ share: 'ready', detail: `adopted virtiofsd ${pid} left by a previous daemon` });
  });

  it('serves a plain folder of the user\'s the same way, and adopts it there too', async () => {
    const folder = path.join(world.root, 'plain');
    mkdirSync(folder);
    writeFileSync(path.join(folder, 'hello.txt'), 'hello');
    chownTree(folder, user);
    const socket = path.join(world.root, 'vms', 'plain.sock');
    const first = await startFolderShare(user, folder, socket);
    expect(first).toMatchObject({ state: 'ready', unprivileged: true });
    expectUnprivileged(first.pid!);
    expect(findVirtiofsd(socket)).toBe(first.pid);
    expect(statSync(socket).uid).toBe(user.uid);
    const again = await startFolderShare(user, folder, socket);
    expect(again).toMatchObject({ state: 'ready', pid: first.pid, detail: `adopted virtiofsd ${first.pid} left by a previous daemon` });
  });

  it('fails closed, saying why, where its namespace cannot show the share', async () => {
    const r = await startFolderShare(user, '/var/tmp', path.join(world.root, 'vms', 'var.sock'));
    expect(r.state).toBe('failed');
    expect(r.detail).toMatch(/the share's source \/var\/tmp is under \/var, which an unprivileged virtiofsd's namespace replaces/);
  });

  it('still starts virtiofsd directly, in no namespace of its own, for a daemon that is root', async () => {
    const folder = path.join(world.root, 'root-plain');
    mkdirSync(folder);
    const socket = path.join(world.root, 'root.sock');
    const r = await startFolderShare(undefined, folder, socket);
    expect(r).toMatchObject({ state: 'ready', unprivileged: false });
    expect(status(r.pid!).Uid!.split('\t')[0]).toBe('0');
    expect(readlinkSync(`/proc/${r.pid}/ns/user`)).toBe(readlinkSync('/proc/self/ns/user'));
  });
});
