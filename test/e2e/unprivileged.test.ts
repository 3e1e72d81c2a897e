import { chownSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runProgram } from '../../src/exec.js';
import { findVirtiofsd } from '../../src/host/virtiofsd.js';
import { namespaceMaps, readSubIds, type NamespaceMaps } from '../../src/host/userns.js';
import { packageRoot } from '../../src/paths.js';
import { asUser, chownTree, TEST_USER, type SessionUser } from '../../src/testbed/as-user.js';
import { QEMU_GUEST_MOUNT, World } from '../../src/testbed/world.js';
import { bootPortalVm, type PortalVm } from '../../src/testbed/qemu/portal-vm.js';

/**
 * The whole host session as an ordinary user, as on a desktop: the private
 * session bus, the portals, the document store, our daemon and the
 * virtiofsd it starts, unprivileged, in a user namespace that keeps the
 * user's uid and gid (src/host/userns.ts). A real QEMU guest reads and writes
 * its document share through it, and a plain folder of the user's through a
 * second virtiofsd started by the same supervisor. Asserted too: the owners
 * the guest sees, and the owners the guest's writes leave on the host.
 *
 * The guest sees what a virtiofsd run as root would show: the user's files
 * owned by the user's uid and gid. So a guest user with that uid (here the
 * test user's own, as a guest's first user 1000 matches a host's first user
 * 1000) owns its documents; the guest's root reads and writes them too.
 */
const USER_VIRTIOFSD = path.join(packageRoot(), 'dist', 'src', 'testbed', 'user-virtiofsd.js');
const PLAIN_MOUNT = '/run/plain';
const notRoot = process.getuid?.() !== 0;

let world: World;
let user: SessionUser;
let maps: NamespaceMaps;
let vm: PortalVm;
let files: string;
let plain: string;

beforeAll(async () => {
  world = await World.start([{ name: 'work', label: 'Work', qemu: true }], { asUser: TEST_USER });
  user = world.user!;
  const { subuid, subgid } = readSubIds();
  maps = namespaceMaps(user, subuid, subgid);
  files = path.join(world.root, 'alice');
  mkdirSync(files);
  chownTree(files, user);
  plain = path.join(world.root, 'plain');
  mkdirSync(plain);
  writeFileSync(path.join(plain, 'hello.txt'), 'hello from the host');
  chownTree(plain, user);
  // One file of a user the namespace does not map (root): the guest sees the overflow id.
  writeFileSync(path.join(plain, 'roots.txt'), 'root\'s');
  const plainSocket = path.join(world.root, 'vms', 'plain.sock');
  const { stdout } = await runProgram(...asUser(user, process.execPath, [USER_VIRTIOFSD, '--source', plain, '--socket', plainSocket, '--cache', 'none', '--log', path.join(world.root, 'vms', 'plain.log')]), {
    env: { XDP_VM_LOG_LEVEL: 'warn' },
    timeoutMs: 20_000,
  });
  expect(JSON.parse(stdout.trim().split('\n').at(-1)!)).toMatchObject({ state: 'ready', unprivileged: true });
  vm = await bootPortalVm(world, 'work', {
    extraQemuArgs: ['-chardev', `socket,id=plain,path=${plainSocket}`, '-device', 'vhost-user-fs-pci,chardev=plain,tag=plain,queue-size=1024'],
  });
  await vmmReachable(15_000);
});

/** Until the daemon has the VM's QMP monitor (it retries with its backoff). */
async function vmmReachable(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let detail = '';
  while (Date.now() < deadline) {
    detail = (JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { vmm: { detail: string } }[] }).vms[0]!.vmm.detail;
    if (detail === '') return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`the daemon did not reach the VM's QMP monitor: ${detail}`);
}
afterAll(async () => {
  await vm?.shutdown().catch(() => undefined);
  await world?.stop();
});

function hostFile(name: string, content: string): string {
  const p = path.join(files, name);
  writeFileSync(p, content);
  chownSync(p, user.uid, user.gid);
  return p;
}

const owner = (p: string) => `${statSync(p).uid}:${statSync(p).gid}`;
/** A shell in the guest as the guest user with `uid` and `gid` (no other groups). */
const asGuestUser = (uid: number, gid: number, script: string) => vm.sh(`setpriv --reuid=${uid} --regid=${gid} --clear-groups -- sh -c '${script.replace(/'/g, `'\\''`)}'`);

describe.skipIf(notRoot)('a QEMU guest through an unprivileged virtiofsd', () => {
  let doc: string;
  let chosen: string;

  it('reads the chosen file through the document share the user\'s own virtiofsd serves', async () => {
    const pid = findVirtiofsd(world.vmPaths('work').share)!;
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(new RegExp(`^Uid:\\t${user.uid}\\t${user.uid}\\t${user.uid}\\t${user.uid}$`, 'm'));
    expect(readFileSync(`/proc/${pid}/uid_map`, 'utf8')).toMatch(new RegExp(`^\\s+${user.uid}\\s+${user.uid}\\s+1$`, 'm'));
    chosen = hostFile('q3.txt', 'Q3 numbers from the host');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${chosen}`], writable: true }));
    const r = await vm.app(['open', 'Open Report']);
    expect(r.files).toEqual([expect.objectContaining({ path: expect.stringMatching(new RegExp(`^${QEMU_GUEST_MOUNT}/\\w+/q3\\.txt$`)), content: 'Q3 numbers from the host' })]);
    doc = r.files[0]!.path;
    expect(await vm.sh(`grep ' ${QEMU_GUEST_MOUNT} ' /proc/mounts`)).toMatch(/^xdp-vm-doc \/run\/xdp-vm\/doc virtiofs /);
  });

  it('shows the document owned by the user\'s uid and gid, and a guest user with that uid reads and writes it', async () => {
    expect(await vm.sh(`stat -c '%u:%g %a' ${doc}`)).toBe(`${user.uid}:${user.gid} 644\n`);
    expect(await asGuestUser(user.uid, user.gid, `cat ${doc} && printf ' + from the guest user' >> ${doc} && id -u`)).toBe(`Q3 numbers from the host${user.uid}\n`);
    expect(readFileSync(chosen, 'utf8')).toBe('Q3 numbers from the host + from the guest user');
    expect(owner(chosen)).toBe(`${user.uid}:${user.gid}`);
  });

  it('lets the guest\'s root read and write it too, and the host file stays the user\'s', async () => {
    await vm.sh(`printf ' + from the guest root' >> ${doc}`);
    expect(await vm.sh(`cat ${doc}`)).toBe('Q3 numbers from the host + from the guest user + from the guest root');
    expect(owner(chosen)).toBe(`${user.uid}:${user.gid}`);
  });

  it('SaveFile: a guest user with the user\'s uid creates the new file, and it is the user\'s on the host', async () => {
    const target = path.join(files, 'minutes.txt');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${target}`] }));
    // The app runs as the guest's root here, and the store's FUSE mount lets
    // only the user's own uid create: root in the guest is, to the host, one
    // of the user's subordinate uids (see src/host/userns.ts).
    const r = await vm.app(['save', 'Save Minutes', 'written by the guest root'], { asRoot: true });
    expect(r.response).toBe(0);
    expect(r.files).toEqual([expect.objectContaining({ error: 'EACCES' })]);
    const saved = r.files[0]!.path;
    await asGuestUser(user.uid, user.gid, `printf 'written by the guest user' > ${saved}`);
    expect(readFileSync(target, 'utf8')).toBe('written by the guest user');
    expect(owner(target)).toBe(`${user.uid}:${user.gid}`);
    expect(await vm.sh(`stat -c '%u:%g' ${saved}`)).toBe(`${user.uid}:${user.gid}\n`);
  });

  it('a plain folder: the guest sees the user\'s files as the user\'s, an unmapped owner as nobody', async () => {
    await vm.sh(`mkdir -p ${PLAIN_MOUNT} && mount -t virtiofs plain ${PLAIN_MOUNT}`);
    expect(await vm.sh(`stat -c '%n %u:%g' ${PLAIN_MOUNT} ${PLAIN_MOUNT}/hello.txt ${PLAIN_MOUNT}/roots.txt`)).toBe(
      [`${PLAIN_MOUNT} ${user.uid}:${user.gid}`, `${PLAIN_MOUNT}/hello.txt ${user.uid}:${user.gid}`, `${PLAIN_MOUNT}/roots.txt 65534:65534`, ''].join('\n'),
    );
  });

  it('a plain folder: what the guest user writes and creates is the user\'s on the host', async () => {
    await asGuestUser(user.uid, user.gid, `cat ${PLAIN_MOUNT}/hello.txt > /dev/null && printf ' + guest user' >> ${PLAIN_MOUNT}/hello.txt && printf new > ${PLAIN_MOUNT}/new.txt && mkdir ${PLAIN_MOUNT}/made`);
    expect(readFileSync(path.join(plain, 'hello.txt'), 'utf8')).toBe('hello from the host + guest user');
    for (const p of ['hello.txt', 'new.txt', 'made']) expect(owner(path.join(plain, p))).toBe(`${user.uid}:${user.gid}`);
    expect(readFileSync(path.join(plain, 'new.txt'), 'utf8')).toBe('new');
    expect(await vm.sh(`stat -c '%u:%g' ${PLAIN_MOUNT}/new.txt ${PLAIN_MOUNT}/made`)).toBe(`${user.uid}:${user.gid}\n`.repeat(2));
  });

  it('a plain folder: the guest root writes the user\'s file as the user, and its own new file stays root\'s in the guest', async () => {
    await vm.sh(`printf ' + guest root' >> ${PLAIN_MOUNT}/hello.txt && printf mine > ${PLAIN_MOUNT}/root-new.txt`);
    expect(readFileSync(path.join(plain, 'hello.txt'), 'utf8')).toBe('hello from the host + guest user + guest root');
    expect(owner(path.join(plain, 'hello.txt'))).toBe(`${user.uid}:${user.gid}`);
    expect(await vm.sh(`stat -c '%u:%g' ${PLAIN_MOUNT}/root-new.txt`)).toBe('0:0\n');
    // On the host, the namespace's root is the first of the user's subordinate ids: the user's, not root's.
    expect(owner(path.join(plain, 'root-new.txt'))).toBe(`${maps.uid[0]!.outside}:${maps.gid[0]!.outside}`);
    // Then a create by an ordinary guest user again: the worker thread that served the root's create kept its capabilities.
    await asGuestUser(user.uid, user.gid, `printf after > ${PLAIN_MOUNT}/after-root.txt`);
    expect(readFileSync(path.join(plain, 'after-root.txt'), 'utf8')).toBe('after');
  });

  it('a plain folder: another guest user cannot write the user\'s files', async () => {
    const other = user.uid + 1;
    const before = readFileSync(path.join(plain, 'hello.txt'), 'utf8');
    expect(await asGuestUser(other, other, `cat ${PLAIN_MOUNT}/hello.txt > /dev/null && echo read; (printf x >> ${PLAIN_MOUNT}/hello.txt) 2>/dev/null || echo refused; (printf x > ${PLAIN_MOUNT}/other.txt) 2>/dev/null || echo refused`)).toBe(
      'read\nrefused\nrefused\n',
    );
    expect(readFileSync(path.join(plain, 'hello.txt'), 'utf8')).toBe(before);
    expect(existsSync(path.join(plain, 'other.txt'))).toBe(false);
  });

  it('keeps the share working across a daemon restart: the new daemon adopts the unprivileged virtiofsd', async () => {
    const pid = findVirtiofsd(world.vmPaths('work').share);
    await world.stopDaemon();
    await world.startDaemon();
    expect(findVirtiofsd(world.vmPaths('work').share)).toBe(pid);
    expect(await vm.sh(`cat ${doc}`)).toBe('Q3 numbers from the host + from the guest user + from the guest root');
  });

  it('starts a fresh unprivileged virtiofsd for the next boot once the VM has powered off', async () => {
    const socket = world.vmPaths('work').share;
    const before = findVirtiofsd(socket);
    await vm.shutdown();
    await expect.poll(() => [before, undefined].includes(findVirtiofsd(socket)), { timeout: 15_000, interval: 200 }).toBe(false);
    const fresh = findVirtiofsd(socket)!;
    expect(readFileSync(`/proc/${fresh}/status`, 'utf8')).toMatch(new RegExp(`^Uid:\\t${user.uid}\\t`, 'm'));
    expect(readFileSync(`/proc/${fresh}/uid_map`, 'utf8')).toMatch(new RegExp(`^\\s+${user.uid}\\s+${user.uid}\\s+1$`, 'm'));
    const { vms } = JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { share: string }[] };
    expect(vms[0]!.share).toBe('ready');
  });
});
