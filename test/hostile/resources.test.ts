import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrame } from '../../src/protocol/framing.js';
import { RawLink } from '../helpers/raw-link.js';
import { World } from '../../src/testbed/world.js';

/**
 * One VM cannot take the daemon's memory or flood its log. A compromised
 * guest talks to the daemon by hand, past its own backend's checks; what it
 * costs the host stays bounded and is given back, and the other VM keeps
 * being served all along.
 */
let world: World;

beforeAll(async () => {
  world = await World.start([{ name: 'work' }, { name: 'shop' }], { guests: false, shares: false });
});
afterAll(async () => {
  await world?.stop();
});

const MiB = 1024 * 1024;
const BIDI = '\u202e';
const ESC = '\u001b';

function rssOf(pid: number): number {
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  if (!kb) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kb) * 1024;
}

async function helloed(vm: string, agent = { name: 'raw', version: '0' }): Promise<RawLink> {
  const link = await RawLink.connect(world.endpointOf(vm));
  link.send({ t: 'hello', versions: [1, 1], agent });
  await expect.poll(() => link.frames.length).toBe(1);
  expect(link.frames[0]).toMatchObject({ t: 'welcome', vm });
  return link;
}

/** A real FileChooser request over a raw link, answered by the host's portal and the scripted user. */
async function openDialogOver(link: RawLink, id: number): Promise<Record<string, unknown>> {
  link.send({ t: 'req', id, method: 'fileChooser.open', params: { kind: 'open', title: 'Open', appId: '', options: {} } });
  await expect.poll(() => link.frames.find((f) => f.id === id), { timeout: 20_000 }).toBeDefined();
  return link.frames.find((f) => f.id === id)!;
}

/** Until the daemon takes what was written, the link goes, or `ms` pass. */
function writable(socket: net.Socket, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      for (const e of ['drain', 'close', 'error']) socket.off(e, done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    for (const e of ['drain', 'close', 'error']) socket.once(e, done);
  });
}

/** Write `bytes` as a guest would, waiting while the daemon does not take them; false once the link is gone. */
async function writeAll(link: RawLink, bytes: Buffer): Promise<boolean> {
  if (link.closed) return false;
  if (!link.socket.write(bytes)) await writable(link.socket, 30_000);
  return !link.closed;
}

describe('a guest that says hello, then stops reading while it streams requests', () => {
  it('loses its link; the daemon stays within bounds of memory and gives it back; another VM is answered meanwhile', async () => {
    const pid = world.daemon!.pid!;
    world.dialog.behave(() => ({ response: 1 }));
    const bystander = await helloed('shop');
    const attacker = await helloed('work');
    attacker.socket.pause();
    const logBefore = world.daemonLog.length;
    const baseline = rssOf(pid);
    // Each of these costs the daemon an error frame several times its size.
    const batch = Buffer.concat(Array.from({ length: 2000 }, (_, i) => encodeFrame({ t: 'req', id: i + 1, method: 'fileChooser.open', params: {} })));
    let peak = baseline;
    let backedUp = false;
    let bystanderAnswer: Promise<Record<string, unknown>> | undefined;
    const giveUp = Date.now() + 120_000;
    while (!attacker.closed && Date.now() < giveUp && peak - baseline < 200 * MiB) {
      if (!attacker.socket.write(batch)) {
        backedUp = true;
        // The other VM asks while this one is at it.
        if (!bystanderAnswer) {
          bystanderAnswer = openDialogOver(bystander, 1);
          bystanderAnswer.catch(() => undefined);
        }
        await writable(attacker.socket, 250);
      }
      peak = Math.max(peak, rssOf(pid));
    }
    expect(peak - baseline).toBeLessThan(200 * MiB);
    expect(backedUp).toBe(true);
    expect(attacker.closed).toBe(true);
    expect(await bystanderAnswer).toMatchObject({ t: 'res', id: 1, result: { response: 1 } });
    expect(world.daemonLog.slice(logBefore).some((l) => l.includes('"vm":"work"') && l.includes('not reading'))).toBe(true);
    // What it cost is given back, and the daemon still serves.
    await expect.poll(() => rssOf(pid) - baseline, { timeout: 30_000, interval: 500 }).toBeLessThan(50 * MiB);
    expect(await openDialogOver(bystander, 2)).toMatchObject({ t: 'res', id: 2, result: { response: 1 } });
    expect(world.daemon?.running).toBe(true);
    bystander.destroy();
  });
});

describe('a guest flooding the daemon with mistakes', () => {
  it('makes a bounded number of short, escaped log lines, none with a stack trace', async () => {
    const before = world.daemonLog.length;
    const evil = `${BIDI}${ESC}[2J${ESC}]0;owned${ESC}\\`;
    const longKey = `${evil}${'k'.repeat(20_000)}`;
    const link = await helloed('work', { name: `${evil}agent`.slice(0, 64), version: `${ESC}[8m` });
    const frames: Buffer[] = [];
    // Answers to requests the daemon never made, each a warning line until now.
    for (let i = 1; i <= 20_000; i++) frames.push(encodeFrame({ t: 'res', id: 100_000 + i, result: {} }));
    for (let i = 1; i <= 5_000; i++) frames.push(encodeFrame({ t: 'err', id: 200_000 + i, code: 'failed', message: evil.repeat(50).slice(0, 1000) }));
    // Requests with guest keys in them, and to methods that do not exist.
    for (let i = 1; i <= 3_000; i++) frames.push(encodeFrame({ t: 'req', id: i, method: 'fileChooser.open', params: { kind: 'open', title: evil, appId: evil, options: {}, [longKey]: 1 } }));
    for (let i = 1; i <= 3_000; i++) frames.push(encodeFrame({ t: 'req', id: 10_000 + i, method: 'no.suchMethod', params: {} }));
    // A backend that "restarts" over and over.
    for (let i = 1; i <= 1_000; i++) frames.push(encodeFrame({ t: 'hello', versions: [1, 1], agent: { name: `${evil}again`, version: String(i) } }));
    for (let i = 0; i < frames.length; i += 1000) expect(await writeAll(link, Buffer.concat(frames.slice(i, i + 1000)))).toBe(true);
    // The requests were answered, each with an error of its own.
    await expect.poll(() => link.frames.filter((f) => f.code === 'unknown-method').length, { timeout: 30_000 }).toBe(3_000);
    const invalid = link.frames.filter((f) => f.code === 'invalid-params') as { message: string }[];
    expect(invalid).toHaveLength(3_000);
    expect(invalid[0]!.message).toContain('\\u{202e}\\x1b[2J');
    expect(invalid[0]!.message.length).toBeLessThanOrEqual(1024);
    // Then a link error of its own, and malformed frames on fresh links, each fatal.
    link.send({ t: 'err', id: null, code: 'failed', message: evil.repeat(100).slice(0, 1000) });
    await expect.poll(() => link.closed, { timeout: 5000 }).toBe(true);
    for (let i = 0; i < 10; i++) {
      const again = await helloed('work');
      again.send({ t: 'req', id: 1, method: 'fileChooser.open', params: {}, [longKey]: i });
      await expect.poll(() => again.closed, { timeout: 5000 }).toBe(true);
      expect(again.frames.at(-1)).toMatchObject({ t: 'err', id: null, code: 'bad-frame' });
    }
    // Each burst ends with a count of what it did not write, once it has been quiet for a while.
    await expect.poll(() => world.daemonLog.slice(before).filter((l) => l.includes('more like this')).length, { timeout: 20_000 }).toBeGreaterThanOrEqual(3);
    await expect.poll(() => world.daemonLog.slice(before).filter((l) => l.includes('closing link')).length, { timeout: 20_000 }).toBe(2);

    const lines = world.daemonLog.slice(before);
    // ~35,000 mistakes; a line each would be 35,000 lines. What is left is a few per kind, plus a few per link.
    expect(lines.length).toBeLessThan(80);
    expect(lines.filter((l) => l.includes('closing link'))).toHaveLength(2);
    expect(lines.filter((l) => l.includes('peer answered a request that does not exist'))).toHaveLength(2);
    expect(lines.find((l) => l.includes('…19999 more like this') || l.includes('…24999 more like this'))).toBeDefined();
    for (const line of lines) {
      expect(line.length).toBeLessThan(2000);
      expect(line).not.toContain(BIDI);
      expect(line).not.toContain(ESC);
      expect(line).not.toContain('"stack"');
      // A viewer that parses the JSON line must not get them back either.
      expect(JSON.stringify(JSON.parse(line))).not.toMatch(/\\u001b|\u202e/);
    }
    expect(world.daemon?.running).toBe(true);
  });
});
