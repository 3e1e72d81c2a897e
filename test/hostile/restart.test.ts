import { mkdirSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus } from '../../src/dbus/bus.js';
import { CONTROL_BUS_NAME } from '../../src/host/control.js';
import { processesMatching } from '../../src/testbed/processes.js';
import { World } from '../../src/testbed/world.js';
import { isAlive } from '../../src/proc.js';

/**
 * The daemon can always be restarted: killed with SIGKILL, its children keep
 * nothing of it (virtiofsd outlives it on purpose, and used to keep its D-Bus
 * connection and so its bus name), and the next daemon serves the VMs within
 * seconds with the same virtiofsd. Losing the session bus, or SIGTERM while
 * the bus does not answer, stops it promptly.
 */

/** What each descriptor of `pid` points at: `socket:[123]`, `pipe:[45]`, a path. */
function descriptorsOf(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(Number(fd), readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      /* closed meanwhile */
    }
  }
  return out;
}

/** Sockets and pipes are the same object exactly when these names are equal. */
const shareable = (target: string) => /^(socket|pipe):\[\d+\]$/.test(target);


describe('kill -9 of the daemon', () => {
  let world: World;
  let file: string;

  beforeAll(async () => {
    world = await World.start([{ name: 'work' }]);
    mkdirSync(path.join(world.root, 'alice'));
    file = path.join(world.root, 'alice', 'notes.txt');
    writeFileSync(file, 'remember the milk');
  });
  afterAll(async () => {
    await world?.stop();
  });

  it("leaves virtiofsd holding nothing of the daemon's, and a new daemon serves the VM with the same virtiofsd", async () => {
    world.dialog.behave(() => ({ response: 0, uris: [`file://${file}`] }));
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(0);
    const [virtiofsd] = processesMatching(`source=${world.viewOf('work')}`);
    expect(virtiofsd).toBeDefined();
    const daemon = world.daemon!;
    const theirs = new Set([...descriptorsOf(daemon.pid!).values()].filter(shareable));
    expect(theirs.size).toBeGreaterThan(0);

    process.kill(daemon.pid!, 'SIGKILL');
    await daemon.exited;

    // Beyond its stdio, virtiofsd shares no socket or pipe with the dead daemon: not its D-Bus connection, not its listeners.
    const kept = [...descriptorsOf(virtiofsd!.pid)].filter(([fd, target]) => fd > 2 && theirs.has(target));
    expect(kept).toEqual([]);
    const bus = await Bus.connect(world.hostBus.address);
    try {
      await expect.poll(() => bus.nameOwner(CONTROL_BUS_NAME), { timeout: 5000 }).toBeUndefined();
    } finally {
      bus.close();
    }

    await world.startDaemon();
    // The guest's backend reconnects by itself; its app gets its file as before.
    const reply = await world.fileDialog('work', 'OpenFile', 'Open again');
    expect(reply.response).toBe(0);
    expect(processesMatching(`source=${world.viewOf('work')}`)).toEqual([virtiofsd]);
    const vms = JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { name: string; connected: boolean; share: string; detail: string }[] };
    expect(vms.vms.find((v) => v.name === 'work')).toMatchObject({ connected: true, share: 'ready', detail: `adopted virtiofsd ${virtiofsd!.pid} left by a previous daemon` });
  });
});

describe('the session bus', () => {
  it('gone: the daemon says so and exits by itself, leaving virtiofsd serving', async () => {
    const world = await World.start([{ name: 'work' }], { guests: false });
    try {
      const daemon = world.daemon!;
      const [virtiofsd] = processesMatching(`source=${world.viewOf('work')}`);
      const before = world.daemonLog.length;
      process.kill(world.hostBus.pid!, 'SIGKILL');
      const exit = await Promise.race([daemon.exited, new Promise<'still running'>((r) => setTimeout(() => r('still running'), 10_000))]);
      expect(exit).not.toBe('still running');
      expect(exit).toMatchObject({ code: 1, signal: null });
      expect(world.daemonLog.slice(before).some((l) => l.includes('the session bus connection is gone'))).toBe(true);
      expect(isAlive(virtiofsd!.pid)).toBe(true);
    } finally {
      await world.stop();
    }
  });

  it('not answering: SIGTERM still stops the daemon within 2 s', async () => {
    const world = await World.start([{ name: 'work' }], { guests: false, shares: false });
    const busPid = world.hostBus.pid!;
    try {
      const daemon = world.daemon!;
      // A frozen bus keeps its sockets open and answers nothing: every call the stop makes would wait out its timeout.
      process.kill(busPid, 'SIGSTOP');
      const sent = Date.now();
      process.kill(daemon.pid!, 'SIGTERM');
      const exit = await Promise.race([daemon.exited, new Promise<'still running'>((r) => setTimeout(() => r('still running'), 2000))]);
      const took = Date.now() - sent;
      expect(exit, `the daemon was still running ${took} ms after SIGTERM`).not.toBe('still running');
      expect(took).toBeLessThan(2000);
    } finally {
      process.kill(busPid, 'SIGCONT');
      await world.stop();
    }
  });

  it('gone, then SIGTERM during the stop: the daemon exits within 2 s', async () => {
    const world = await World.start([{ name: 'work' }], { guests: false, shares: false });
    try {
      const daemon = world.daemon!;
      process.kill(world.hostBus.pid!, 'SIGKILL');
      const sent = Date.now();
      process.kill(daemon.pid!, 'SIGTERM');
      const exit = await Promise.race([daemon.exited, new Promise<'still running'>((r) => setTimeout(() => r('still running'), 2000))]);
      expect(exit, `the daemon was still running ${Date.now() - sent} ms after SIGTERM`).not.toBe('still running');
    } finally {
      await world.stop();
    }
  });
});
