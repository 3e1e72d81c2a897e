import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QEMU_GUEST_MOUNT, World } from '../../src/testbed/world.js';
import { packageRoot } from '../../src/paths.js';
import { bootPortalVm, GUEST_APP, type PortalVm } from '../../src/testbed/qemu/portal-vm.js';

/**
 * The FileChooser chain where users run it: apps in two real QEMU guests at
 * once (TCG here), the stock xdg-desktop-portal in each, our backend over
 * virtio-serial, the host daemon hot-plugging each VM's share over QMP.
 * Every assertion is about what the guest app sees.
 */
let world: World;
let work: PortalVm;
let shop: PortalVm;
let files: string;

beforeAll(async () => {
  world = await World.start([
    { name: 'work', label: 'Work', qemu: true },
    { name: 'shop', label: 'Shopping', qemu: true },
  ]);
  files = path.join(world.root, 'alice');
  world.hostDir(files);
  [work, shop] = await Promise.all([bootPortalVm(world, 'work'), bootPortalVm(world, 'shop')]);
});
afterAll(async () => {
  await Promise.allSettled([work?.shutdown(), shop?.shutdown()]);
  await world?.stop();
});

function hostFile(name: string, content: string): string {
  return world.hostFile(path.join(files, name), content);
}

const docIdOf = (guestPath: string) => path.basename(path.dirname(guestPath));

describe('FileChooser in QEMU guests', () => {
  let workDoc: string;

  it('OpenFile: the guest app reads the chosen host bytes through the hot-plugged share', async () => {
    const chosen = hostFile('q3.txt', 'Q3 numbers from the host');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${chosen}`] }));
    const r = await work.app(['open', 'Open Report']);
    expect(r.response).toBe(0);
    expect(r.files).toEqual([expect.objectContaining({ path: expect.stringMatching(new RegExp(`^${QEMU_GUEST_MOUNT}/\\w+/q3\\.txt$`)), content: 'Q3 numbers from the host' })]);
    workDoc = r.files[0]!.path;
    expect(world.dialog.calls.at(-1)!.title).toBe('Work: Open Report');
    expect(await work.sh(`grep ' ${QEMU_GUEST_MOUNT} ' /proc/mounts`)).toMatch(/^xdp-vm-doc \/run\/xdp-vm\/doc virtiofs /);
  });

  it('SaveFile: the host file holds the guest\'s bytes', async () => {
    const target = path.join(files, 'minutes.txt');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${target}`] }));
    const r = await work.app(['save', 'Save Minutes', 'written inside the work VM']);
    expect(r.response).toBe(0);
    expect(world.dialog.calls.at(-1)).toMatchObject({ method: 'SaveFile', title: 'Work: Save Minutes', options: { current_name: 'from-guest.txt' } });
    expect(readFileSync(target, 'utf8')).toBe('written inside the work VM');
  });

  it('a second VM running at the same time cannot see the first VM\'s documents through its own mount', async () => {
    const own = hostFile('groceries.txt', 'milk');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${own}`] }));
    const r = await shop.app(['open', 'Open List']);
    expect(r.files).toEqual([expect.objectContaining({ path: expect.stringMatching(/groceries\.txt$/), content: 'milk' })]);
    const listing = await shop.sh(`ls ${QEMU_GUEST_MOUNT}`);
    expect(listing.trim().split('\n')).toEqual([docIdOf(r.files[0]!.path)]);
    expect(await shop.sh(`cat ${workDoc} 2>&1 || echo "status $?"`)).toMatch(/No such file or directory\s+status 1/);
  });

  it('revoke: the guest\'s read fails at once', async () => {
    const id = docIdOf(workDoc);
    expect(await work.sh(`cat ${workDoc}`)).toBe('Q3 numbers from the host');
    await world.cli(['grants', 'revoke', 'work', id]);
    expect(await work.sh(`cat ${workDoc} 2>&1 || echo "status $?"`)).toMatch(/No such file or directory\s+status 1/);
  });

  it('the AF_VSOCK addon works in the guest over vsock_loopback: listen, connect, peer CID, frames at the cap', async () => {
    const out = await work.sh(`node ${path.join(packageRoot(), 'dist', 'scripts', 'vsock-selftest.js')}`, 120_000);
    const result = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(result).toMatchObject({ ok: true });
  });
});

describe('faults', () => {
  it('the guest backend killed mid-request: the app gets 2, and the next call works', async () => {
    world.dialog.behave(() => 'leave-open');
    const shown = world.dialog.nextCall(60_000);
    await work.sh(`(node ${GUEST_APP} open 'Open Slowly' > /run/app-killed.json 2>&1 &)`);
    const stale = await shown;
    await work.sh(`pkill -KILL -f 'xdp-vm.mjs guest'`);
    await expect.poll(async () => (await work.sh('cat /run/app-killed.json')).trim(), { timeout: 30_000, interval: 500 }).not.toBe('');
    expect(JSON.parse((await work.sh('cat /run/app-killed.json')).trim())).toMatchObject({ response: 2, files: [] });
    const again = hostFile('after-kill.txt', 'second try');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${again}`] }));
    const r = await work.app(['open', 'Open Again']);
    expect(r.files[0]).toMatchObject({ content: 'second try' });
    // virtio-serial tells the host nothing when a guest process dies; the
    // restarted backend's hello resets the session, which closes the dialog
    // the dead one had left up.
    expect(stale.closed).toBe(true);
  });

  it('the host daemon restarted: the guest reconnects by itself and its grants are intact', async () => {
    const kept = hostFile('kept.txt', 'survives a daemon restart');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${kept}`] }));
    const before = (await work.app(['open', 'Open'])).files[0]!.path;
    await world.stopDaemon();
    await world.startDaemon();
    expect(await work.sh(`cat ${before}`)).toBe('survives a daemon restart');
    const next = hostFile('next.txt', 'after the restart');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${next}`] }));
    expect((await work.app(['open', 'Open'])).files[0]).toMatchObject({ content: 'after the restart' });
  });

  it('revoking everything of a VM unplugs its share', async () => {
    const { stdout } = await world.cli(['grants', 'revoke', 'shop', '--all']);
    expect(stdout).toMatch(/Revoked 1 grant\(s\) from shop and unplugged its share/);
    expect(await shop.sh(`grep -c ' ${QEMU_GUEST_MOUNT} ' /proc/mounts || true`)).toBe('0\n');
    expect(await shop.sh('ls /sys/bus/virtio/drivers/virtiofs | grep -c virtio || true')).toBe('1\n');
  });
});
