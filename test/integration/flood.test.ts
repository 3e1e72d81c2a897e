import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAuditLines } from '../../src/host/audit.js';
import { RawLink } from '../helpers/raw-link.js';
import { World } from '../../src/testbed/world.js';

/**
 * A VM that fires requests as fast as it can: past its limit each one is
 * answered 2 at once with no dialog, the audit trail gets one line when the
 * burst starts and one when it ends, and every other VM is served as usual.
 * The limit here is one pending request, so the burst is every request sent
 * while the first one's dialog is open.
 */
let world: World;
let file: string;

beforeAll(async () => {
  world = await World.start([{ name: 'work' }, { name: 'shop' }], { config: { flood: { maxPending: 1, maxRecent: 30, windowSeconds: 60 } } });
  mkdirSync(path.join(world.root, 'alice'));
  file = path.join(world.root, 'alice', 'list.txt');
  writeFileSync(file, 'milk, eggs');
});
afterAll(async () => {
  await world?.stop();
});

const floodLines = (vm: string) => parseAuditLines(readFileSync(world.auditFile, 'utf8').split('\n')).filter((l) => l.vm === vm && l.reason === 'flood');

describe('a flooding VM', () => {
  it('gets 1,000 answers and one dialog; another VM is served meanwhile; the audit has one line per burst', async () => {
    let releaseWork!: () => void;
    const workReleased = new Promise<void>((r) => (releaseWork = r));
    world.dialog.behave(async (call) => {
      if (!call.title.startsWith('work:')) return { response: 0, uris: [`file://${file}`] };
      await workReleased;
      return { response: 1 };
    });
    const workDialogs = () => world.dialog.calls.filter((c) => c.title.startsWith('work:')).length;

    const link = await RawLink.connect(world.endpointOf('work'));
    link.hello();
    await expect.poll(() => link.frames[0]?.t).toBe('welcome');
    const answer = (id: number) => link.frames.find((f) => f.id === id && (f.t === 'res' || f.t === 'err'));
    const request = (id: number) => link.send({ t: 'req', id, method: 'fileChooser.open', params: { kind: 'open', title: `Flood ${id}`, appId: '', options: {} } });

    const shown = world.dialog.nextCall();
    request(1);
    await shown;

    let shop: Promise<{ response: number }> | undefined;
    // Batches stay under the link's in-flight cap, so every refusal is a real answer rather than "busy".
    for (let first = 2; first <= 1000; first += 40) {
      const ids = Array.from({ length: Math.min(40, 1001 - first) }, (_, i) => first + i);
      for (const id of ids) request(id);
      await expect.poll(() => ids.every((id) => answer(id)), { timeout: 10_000 }).toBe(true);
      if (first > 500 && !shop) shop = world.fileDialog('shop', 'OpenFile', 'Shopping list');
    }

    for (let id = 2; id <= 1000; id++) expect(answer(id)).toEqual({ t: 'res', id, result: { response: 2, results: {} } });
    expect(workDialogs()).toBe(1);
    expect((await shop!).response).toBe(0);
    expect(floodLines('work')).toMatchObject([{ decision: 'deny', reason: 'flood', portal: 'FileChooser', grant: null, flood: { phase: 'start', refused: 1 } }]);
    expect(world.daemonLog.filter((l) => l.includes('"reason":"flood"'))).toHaveLength(1);
    expect(floodLines('shop')).toEqual([]);

    releaseWork();
    await expect.poll(() => answer(1)).toMatchObject({ t: 'res', result: { response: 1 } });
    request(1001);
    await expect.poll(() => answer(1001)).toMatchObject({ t: 'res', result: { response: 1 } });
    expect(workDialogs()).toBe(2);
    const lines = floodLines('work');
    expect(lines.map((l) => l.flood)).toEqual([
      { phase: 'start', refused: 1 },
      { phase: 'end', refused: 999 },
    ]);
    expect(lines[1]!.request).toBe(lines[0]!.request);
    const human = (await world.cli(['log', '--vm', 'work'])).stdout;
    expect(human).toMatch(/work FileChooser deny \(flood\) burst started\n/);
    expect(human).toMatch(/work FileChooser deny \(flood\) burst over, 999 refused\n/);
    link.destroy();
  });
});
