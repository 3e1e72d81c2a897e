import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAuditLines } from '../../src/host/audit.js';
import { findVirtiofsd } from '../../src/host/virtiofsd.js';
import { World } from '../../src/testbed/world.js';
import { bootPortalVm, type PortalVm } from '../../src/testbed/qemu/portal-vm.js';

/**
 * A whole folder shared with a real QEMU guest, the way a user does it:
 * `xdp-vm share add` against the running daemon (run as the user, as every
 * World's is), its own unprivileged virtiofsd and its own virtio-fs device
 * hot-plugged, the guest's root agent mounting it at
 * /run/xdp-vm/shares/NAME and its session adding the bookmark. Then what a
 * user relies on: live in both directions, read-only enforced by the host
 * (the guest's mount itself is read-write, so EROFS can only come from the
 * host), the refusals, persistence across a daemon restart and a VM reboot,
 * and removal.
 */
let world: World;
let vm: PortalVm | undefined;
let photos: string;
let code: string;
const SHARES = '/run/xdp-vm/shares';
const BOOKMARKS = '/run/home/.config/gtk-3.0/bookmarks';

beforeAll(async () => {
  world = await World.start([
    { name: 'work', label: 'Work', qemu: true },
    { name: 'shop', label: 'Shop', qemu: true },
  ]);
  photos = world.hostDir(path.join(world.root, 'Photos'));
  world.hostFile(path.join(photos, 'beach.txt'), 'sand and sea');
  code = world.hostDir(path.join(world.root, 'projects'));
  world.hostFile(path.join(code, 'main.c'), 'int main(void) { return 0; }\n');
});
afterAll(async () => {
  await vm?.guest.cleanup();
  await world?.stop();
});

async function boot(): Promise<PortalVm> {
  // The document share and two folder shares: one root port each.
  vm = await bootPortalVm(world, 'work', { rootPorts: 4 });
  // What the guest's session start does (install-guest enables the backend's
  // user unit for graphical-session.target): this guest has no systemd, so
  // start the backend by D-Bus activation, as its unit would be.
  await vm.sh('dbus-send --session --print-reply --dest=org.freedesktop.impl.portal.desktop.vm /org/freedesktop/portal/desktop org.freedesktop.DBus.Peer.Ping >/dev/null');
  return vm;
}

/** Run `script` in the guest as the host user's uid (the guest's first user), as an app there would. */
function asGuestUser(script: string): string {
  const u = world.user!;
  return `setpriv --reuid ${u.uid} --regid ${u.gid} --clear-groups -- sh -c '${script.replace(/'/g, `'\\''`)}'`;
}

async function shareList(vmName?: string): Promise<{ vm: string; name: string; state: string; readOnly: boolean; hostPath: string; guestPath: string }[]> {
  return JSON.parse((await world.cli(['share', 'list', ...(vmName ? [vmName] : []), '--json'])).stdout);
}

const mountedIn = async (g: PortalVm, name: string) => (await g.sh(`grep -c ' ${SHARES}/${name} virtiofs ' /proc/mounts || true`)).trim() === '1';
const audit = () => parseAuditLines(readFileSync(world.auditFile, 'utf8').split('\n')).filter((l) => l.portal === 'FolderShare');

describe('folder shares in a real guest', () => {
  it('share add plugs the folder in, and the guest sees it mounted and in its file chooser\'s sidebar', async () => {
    const g = await boot();
    const added = await world.cli(['share', 'add', 'work', photos, '--read-only']);
    expect(added.stdout).toMatch(/as "photos", read-only: \/run\/xdp-vm\/shares\/photos in the VM/);
    await world.cli(['share', 'add', 'work', code, '--name', 'code']);
    expect(await g.sh(`cat ${SHARES}/photos/beach.txt`)).toBe('sand and sea');
    expect(await g.sh(`cat ${SHARES}/code/main.c`)).toBe('int main(void) { return 0; }\n');
    const bookmarks = await g.sh(`cat ${BOOKMARKS}`);
    expect(bookmarks).toContain(`file://${SHARES}/photos photos\n`);
    expect(bookmarks).toContain(`file://${SHARES}/code code\n`);
    expect(await shareList('work')).toEqual([
      expect.objectContaining({ name: 'photos', state: 'attached', readOnly: true, hostPath: photos, guestPath: `${SHARES}/photos` }),
      expect.objectContaining({ name: 'code', state: 'attached', readOnly: false, hostPath: code }),
    ]);
    expect(audit().filter((l) => l.decision === 'allow').map((l) => l.grant)).toEqual([['photos'], ['code']]);
  });

  it('a read-write share is live both ways: a guest write lands on the host as the user, a host write shows in the guest', async () => {
    const g = vm!;
    await g.sh(asGuestUser(`echo "from the guest" > ${SHARES}/code/notes.txt`));
    expect(readFileSync(path.join(code, 'notes.txt'), 'utf8')).toBe('from the guest\n');
    world.hostFile(path.join(code, 'later.txt'), 'written on the host after the mount');
    expect(await g.sh(`cat ${SHARES}/code/later.txt`)).toBe('written on the host after the mount');
  });

  it('--read-only is the host\'s: every write in the guest fails with EROFS, its root\'s included, and the folder is untouched', async () => {
    const g = vm!;
    const asUser = await g.sh(`${asGuestUser(`echo x > ${SHARES}/photos/new.txt`)} 2>&1; echo "exit $?"`);
    expect(asUser).toMatch(/Read-only file system/);
    expect(asUser).toMatch(/exit [1-9]/);
    const asRoot = await g.sh(`rm ${SHARES}/photos/beach.txt 2>&1; mkdir ${SHARES}/photos/d 2>&1; echo "exit $?"`);
    expect(asRoot.match(/Read-only file system/g)?.length).toBe(2);
    // The guest's own mount is read-write: the refusal can only have come from the host's virtiofsd.
    expect(await g.sh(`grep ' ${SHARES}/photos ' /proc/mounts`)).toMatch(/virtiofs rw[, ]/);
    expect(existsSync(path.join(photos, 'new.txt'))).toBe(false);
    expect(readFileSync(path.join(photos, 'beach.txt'), 'utf8')).toBe('sand and sea');
  });

  it('refuses what a VM must never get, each with its reason, and nothing changes', async () => {
    const refused = async (args: string[]) => {
      const err = await world.cli(['share', 'add', ...args]).then(() => undefined, (e: Error) => e.message);
      expect(err, args.join(' ')).toBeDefined();
      return err!;
    };
    expect(await refused(['work', '/'])).toMatch(/"\/" is the whole host file system/);
    expect(await refused(['work', world.hostEnv.HOME!])).toMatch(/is your whole home folder.*--force/);
    expect(await refused(['work', world.docMount])).toMatch(/under \/run|document store/);
    expect(await refused(['shop', path.join(code, '.')])).toMatch(/overlaps VM "work"'s share "code"/);
    expect(await refused(['work', path.join(world.root, 'nowhere')])).toMatch(/there is no folder .*nowhere on the host/);
    expect(await refused(['work', path.join(photos, 'beach.txt')])).toMatch(/is not a folder/);
    expect(await refused(['work', world.root, '--name', '../up'])).toMatch(/"\.\.\/up" is not a share name/);
    expect(await refused(['nosuchvm', photos])).toMatch(/no VM named "nosuchvm"/);
    expect((await shareList()).map((s) => `${s.vm}/${s.name}`)).toEqual(['work/photos', 'work/code']);
    expect(audit().filter((l) => l.decision === 'deny').length).toBeGreaterThanOrEqual(4);
  });

  it('a daemon restart leaves the shares mounted and serving: the new daemon adopts each virtiofsd', async () => {
    const g = vm!;
    const served = findVirtiofsd(path.join(world.hostEnv.XDG_RUNTIME_DIR!, 'xdp-vm', 'work-f-code.sock'));
    expect(served).toBeDefined();
    await world.stopDaemon();
    await world.startDaemon();
    expect(findVirtiofsd(path.join(world.hostEnv.XDG_RUNTIME_DIR!, 'xdp-vm', 'work-f-code.sock'))).toBe(served);
    expect(await g.sh(`cat ${SHARES}/code/notes.txt`)).toBe('from the guest\n');
    await expect.poll(async () => (await shareList('work')).map((s) => s.state), { timeout: 15_000 }).toEqual(['attached', 'attached']);
  });

  it('after a reboot the VM gets its shares back by itself: plugged in, mounted, read-only still', async () => {
    await vm!.shutdown();
    await vm!.guest.cleanup();
    const g = await boot();
    await expect.poll(() => mountedIn(g, 'code'), { timeout: 60_000, interval: 500 }).toBe(true);
    await expect.poll(() => mountedIn(g, 'photos'), { timeout: 30_000, interval: 500 }).toBe(true);
    expect(await g.sh(`cat ${SHARES}/code/later.txt`)).toBe('written on the host after the mount');
    expect(await g.sh(`${asGuestUser(`touch ${SHARES}/photos/again`)} 2>&1 || true`)).toMatch(/Read-only file system/);
  });

  it('share remove unmounts, unplugs and stops its virtiofsd; the bookmark goes and the other share stays', async () => {
    const g = vm!;
    const socket = path.join(world.hostEnv.XDG_RUNTIME_DIR!, 'xdp-vm', 'work-f-code.sock');
    const served = findVirtiofsd(socket);
    expect(served).toBeDefined();
    await world.cli(['share', 'remove', 'work', 'code']);
    expect(await mountedIn(g, 'code')).toBe(false);
    expect(await g.sh(`cat ${BOOKMARKS}`)).not.toContain('/code ');
    expect(await g.sh(`cat ${BOOKMARKS}`)).toContain(`${SHARES}/photos photos`);
    await expect.poll(() => existsSync(`/proc/${served}`), { timeout: 10_000 }).toBe(false);
    expect((await shareList()).map((s) => s.name)).toEqual(['photos']);
    expect(await g.sh(`cat ${SHARES}/photos/beach.txt`)).toBe('sand and sea');
    expect(readFileSync(path.join(code, 'notes.txt'), 'utf8')).toBe('from the guest\n');
    expect(audit().at(-1)).toMatchObject({ vm: 'work', decision: 'revoke', reason: 'cli', grant: ['code'] });
    const err = await world.cli(['share', 'remove', 'work', 'code']).then(() => '', (e: Error) => e.message);
    expect(err).toMatch(/VM "work" has no folder share "code"/);
  });
});
