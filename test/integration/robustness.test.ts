import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PORTALS } from '../../portals/index.js';
import { processesMatching } from '../../src/testbed/processes.js';
import { RawLink } from '../helpers/raw-link.js';
import { World } from '../../src/testbed/world.js';

/**
 * A hostile or broken guest gets a precise error and loses its own link;
 * every other VM keeps being served, and the daemon keeps running.
 */
let world: World;
let file: string;

beforeAll(async () => {
  world = await World.start([{ name: 'work' }, { name: 'shop', label: 'Shopping' }]);
  mkdirSync(path.join(world.root, 'alice'));
  file = path.join(world.root, 'alice', 'list.txt');
  writeFileSync(file, 'milk, eggs');
});
afterAll(async () => {
  await world?.stop();
});

const BAD_INPUTS: [string, (l: RawLink) => void, string][] = [
  ['a frame that is not JSON', (l) => l.sendBytes(Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('{{{')])), 'bad-frame'],
  ['a frame header over the cap', (l) => l.sendBytes(Buffer.from([0x7f, 0, 0, 0])), 'too-large'],
  ['an unknown frame type', (l) => l.send({ t: 'exploit', payload: 1 }), 'bad-frame'],
  ['a welcome sent by a guest', (l) => l.send({ t: 'welcome', version: 1, vm: 'shop' }), 'bad-frame'],
];

describe('a malformed frame from one VM', () => {
  for (const [what, send, code] of BAD_INPUTS) {
    it(`${what}: that VM gets "${code}" and its link closed; another VM's open request is unharmed`, async () => {
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      world.dialog.behave(async () => {
        await released;
        return { response: 0, uris: [`file://${file}`] };
      });
      const shown = world.dialog.nextCall();
      const shopRequest = world.fileDialog('shop', 'OpenFile', 'Open list');
      await shown;

      const logBefore = world.daemonLog.length;
      const bad = await RawLink.connect(world.guest('work').endpoint);
      bad.hello();
      await expect.poll(() => bad.frames.length).toBe(1);
      send(bad);
      await expect.poll(() => bad.closed, { timeout: 5000 }).toBe(true);
      expect(bad.frames.at(-1)).toMatchObject({ t: 'err', id: null, code });
      const complaints = world.daemonLog.slice(logBefore).filter((l) => l.includes('closing link'));
      expect(complaints).toHaveLength(1);
      expect(complaints[0]).toContain('"vm":"work"');

      release();
      const reply = await shopRequest;
      expect(reply.response).toBe(0);
      const uri = (reply.results.uris!.value as string[])[0]!;
      expect(readFileSync(fileURLToPath(uri), 'utf8')).toBe('milk, eggs');
      expect(world.daemon?.running).toBe(true);
    });
  }

  it('invalid parameters fail that one request only, and the link stays up', async () => {
    const link = await RawLink.connect(world.guest('work').endpoint);
    link.hello();
    link.send({ t: 'req', id: 7, method: 'fileChooser.open', params: { kind: 'open', title: 'x'.repeat(5000), appId: '', options: {} } });
    link.send({ t: 'req', id: 8, method: 'fileChooser.nuke', params: {} });
    await expect.poll(() => link.frames.length).toBe(3);
    expect(link.frames[1]).toMatchObject({ t: 'err', id: 7, code: 'invalid-params' });
    expect(link.frames[1]!.message).toMatch(/title/);
    expect(link.frames[2]).toMatchObject({ t: 'err', id: 8, code: 'unknown-method' });
    expect(link.closed).toBe(false);
    link.destroy();
  });

  it('the real guest of a VM reconnects by itself after a hostile link took its place', async () => {
    // A new link from a VM replaces its old one: the real guest's link is closed here.
    const intruder = await RawLink.connect(world.guest('work').endpoint);
    intruder.hello();
    await expect.poll(() => intruder.frames.length).toBe(1);
    intruder.destroy();
    world.dialog.behave(() => ({ response: 0, uris: [`file://${file}`] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Open');
    expect(reply.response).toBe(0);
  });
});

describe('xdp-vm vms', () => {
  it('shows each VM, whether it is connected, and its share', async () => {
    const { stdout } = await world.cli(['vms', '--json']);
    const vms = JSON.parse(stdout) as { daemon: boolean; vms: { name: string; connected: boolean; share: string }[] };
    expect(vms.daemon).toBe(true);
    expect(vms.vms).toEqual([
      expect.objectContaining({ name: 'work', connected: true, share: 'ready' }),
      expect.objectContaining({ name: 'shop', connected: true, share: 'ready' }),
    ]);
    const human = (await world.cli(['vms'])).stdout;
    // Every portal with a host half is served when no row shuts one.
    const served = PORTALS.filter((p) => 'host' in p && !!p.host).map((p) => p.name).join(',');
    expect(served).toMatch(/^FileChooser,Settings/);
    expect(human).toMatch(new RegExp(`^shop\\s+Shopping\\s+hybrid-vsock\\s+yes\\s+ready\\s+${served}$`, 'm'));
  });
});

describe('virtiofsd supervision', () => {
  it('one virtiofsd per VM serves that VM\'s document view', async () => {
    for (const vm of ['work', 'shop']) expect(processesMatching(`source=${world.viewOf(vm)}`)).toHaveLength(1);
  });

  it('a crash is reported loudly and shown by xdp-vm vms; the daemon keeps serving', async () => {
    const [shopVirtiofsd] = processesMatching(`source=${world.viewOf('shop')}`);
    process.kill(shopVirtiofsd!.pid, 'SIGKILL');
    await expect.poll(() => world.daemonLog.some((l) => l.includes('SHARE FAILED') && l.includes('"vm":"shop"')), { timeout: 5000 }).toBe(true);
    const vms = JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { name: string; share: string; detail: string }[] };
    const shop = vms.vms.find((v) => v.name === 'shop')!;
    expect(shop.share).toBe('failed');
    expect(shop.detail).toMatch(/virtiofsd was killed by SIGKILL.*share of VM "shop" is dead/);
    expect((await world.cli(['vms'])).stdout).toContain('shop: virtiofsd was killed by SIGKILL');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${file}`] }));
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(0);
  });

  it('a daemon restart leaves virtiofsd serving (a guest may have the share mounted) and adopts it', async () => {
    const [before] = processesMatching(`source=${world.viewOf('work')}`);
    await world.stopDaemon();
    expect(processesMatching(`source=${world.viewOf('work')}`)).toEqual([before]);
    await world.startDaemon();
    const vms = JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { name: string; share: string; detail: string }[] };
    expect(vms.vms.find((v) => v.name === 'work')).toMatchObject({ share: 'ready', detail: `adopted virtiofsd ${before!.pid} left by a previous daemon` });
    expect(processesMatching(`source=${world.viewOf('work')}`)).toEqual([before]);
  });
});

describe('a broken VM config entry', () => {
  it('one VM whose share cannot start is reported; the daemon serves the other VMs', async () => {
    // World.start writes the socket paths itself; make "broken"'s a plain file and restart.
    const world2 = await World.start([{ name: 'good' }, { name: 'broken' }]);
    try {
      await world2.stopDaemon();
      const sock = world2.vmPaths('broken').share;
      for (const p of processesMatching(`--socket-path=${sock}`)) process.kill(p.pid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 200));
      rmSync(sock, { force: true });
      writeFileSync(sock, 'not a socket');
      await world2.startDaemon();
      const vms = JSON.parse((await world2.cli(['vms', '--json'])).stdout) as { vms: { name: string; share: string; detail: string }[] };
      expect(vms.vms.find((v) => v.name === 'broken')).toMatchObject({ share: 'failed', detail: expect.stringMatching(/virtiofsd could not start: .*exists and is not a socket/) });
      expect(vms.vms.find((v) => v.name === 'good')).toMatchObject({ share: 'ready' });
      world2.dialog.behave(() => ({ response: 0, uris: [`file://${file}`] }));
      expect((await world2.fileDialog('good', 'OpenFile', 'Open')).response).toBe(0);
    } finally {
      await world2.stop();
    }
  });
});
