import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processesMatching } from '../../src/testbed/processes.js';
import { World } from '../../src/testbed/world.js';
import { requireProgram } from '../../src/deps.js';
import { VirtiofsdSupervisor } from '../../src/host/virtiofsd.js';
import { pino } from 'pino';
import { hasVmmConnected } from '../../src/host/removed-vms.js';

/**
 * A VM removed from the config keeps nothing the user cannot see or take
 * back: its documents are still listed and revocable, and the daemon stops
 * serving it, its idle virtiofsd included.
 */
let world: World;
const silent = pino({ level: 'silent' });
let file: string;

beforeAll(async () => {
  world = await World.start([{ name: 'work' }, { name: 'shop' }]);
  mkdirSync(path.join(world.root, 'alice'));
  file = path.join(world.root, 'alice', 'receipt.txt');
  writeFileSync(file, 'paid');
  world.dialog.behave(() => ({ response: 0, uris: [`file://${file}`] }));
  const r = await world.fileDialog('shop', 'OpenFile', 'Open'); if (r.response !== 0) console.log(world.daemonLog.join('\n'));
  expect(r.response).toBe(0);
  // The user removes "shop" from the config and restarts the daemon.
  await world.stopDaemon();
  const config = JSON.parse(readFileSync(world.configPath, 'utf8')) as { vms: Record<string, unknown> };
  delete config.vms.shop;
  writeFileSync(world.configPath, JSON.stringify(config));
  await world.startDaemon();
});
afterAll(async () => {
  await world?.stop();
});

type Row = { vm: string; id: string; hostPath: string };

describe('a VM removed from the config', () => {
  it('still has its grants listed, by name and among all', async () => {
    const byName = JSON.parse((await world.cli(['grants', 'shop', '--json'])).stdout) as Row[];
    expect(byName).toEqual([expect.objectContaining({ vm: 'shop', hostPath: file })]);
    const all = JSON.parse((await world.cli(['grants', '--json'])).stdout) as Row[];
    expect(all.map((r) => r.vm)).toContain('shop');
  });

  it('has its idle virtiofsd stopped, while the configured VM keeps its own', async () => {
    await expect.poll(() => processesMatching(`source=${world.viewOf('shop')}`).length, { timeout: 5000 }).toBe(0);
    expect(processesMatching(`source=${world.viewOf('work')}`).length).toBeGreaterThan(0);
    expect(world.daemonLog.some((l) => l.includes('VM \\"shop\\" is no longer configured: stopped its idle virtiofsd'))).toBe(true);
  });

  it('is not served: nothing listens on its endpoint', async () => {
    const refused = await new Promise<string>((resolve) => {
      const s = net.connect(world.endpointOf('shop'));
      s.once('connect', () => (s.destroy(), resolve('connected')));
      s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    expect(['ENOENT', 'ECONNREFUSED']).toContain(refused);
  });

  it('can have everything revoked, after which it is gone from the list', async () => {
    const out = await world.cli(['grants', 'revoke', 'shop', '--all']);
    expect(out.stdout).toMatch(/Revoked 1 grant/);
    expect(existsSync(world.viewOf('shop')) ? readdirSync(world.viewOf('shop')) : []).toEqual([]);
    await expect(world.cli(['grants', 'shop'])).rejects.toThrow(/no VM named "shop"/);
    expect(JSON.parse((await world.cli(['grants', '--json'])).stdout)).toEqual([]);
  });
});

describe('telling an idle virtiofsd from one that serves a VM', () => {
  it('sees a VMM connected on the vhost-user socket, and not before or after', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'xdp-vm-vfsd-'));
    mkdirSync(path.join(dir, 'src'));
    const sock = path.join(dir, 'vfs.sock');
    // Started as the daemon starts one: unprivileged, in its user namespace, when the tests are not root.
    const vfsd = new VirtiofsdSupervisor({ vm: 'idle', binary: requireProgram('virtiofsd'), source: path.join(dir, 'src'), socket: sock, cache: 'auto', logFile: path.join(dir, 'vfs.log'), log: silent });
    await vfsd.start();
    try {
      await expect.poll(() => existsSync(sock)).toBe(true);
      const pids = () => processesMatching(`--socket-path=${sock}`).map((p) => p.pid);
      expect(pids().some((pid) => hasVmmConnected(pid, sock))).toBe(false);
      const vmm = net.connect(sock);
      await new Promise((r) => vmm.once('connect', r));
      await expect.poll(() => pids().some((pid) => hasVmmConnected(pid, sock))).toBe(true);
      // virtiofsd serves one VMM and exits when it lets go (and no supervisor starts it again).
      vfsd.release();
      vmm.destroy();
      await expect.poll(() => pids().length, { timeout: 5000 }).toBe(0);
    } finally {
      await vfsd.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
