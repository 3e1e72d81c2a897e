import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Bus } from '../src/dbus/bus.js';
import { fileDialogOn, World } from '../src/testbed/world.js';
import { BENCH_CONFIG, summarize, timeEach, type Summary } from './stats.js';

/**
 * The forwarded OpenFile (guest app → guest frontend → our backend → host
 * daemon → host frontend → dialog → document store → back) beside a host-local
 * OpenFile (host app → host frontend → the same dialog), in one run.
 */
export interface RoundTrip {
  forwarded: Summary;
  local: Summary;
  ratioP50: number;
  ratioP99: number;
}

export async function benchRoundTrip(n: number): Promise<RoundTrip> {
  const world = await World.start([{ name: 'work', label: 'Work' }], { config: BENCH_CONFIG });
  try {
    const dir = path.join(world.root, 'alice');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'bench.txt'), 'x');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${dir}/bench.txt`] }));
    const guestApp = await Bus.connect(world.guest('work').bus.address);
    const hostApp = await Bus.connect(world.hostBus.address);
    const check = (r: { response: number }) => {
      if (r.response !== 0) throw new Error(`round trip answered ${r.response}`);
    };
    try {
      // Interleave the two in blocks so drift on a shared machine hits both alike.
      const forwarded: number[] = [];
      const local: number[] = [];
      const block = 50;
      for (let done = 0; done < n; done += block) {
        const k = Math.min(block, n - done);
        forwarded.push(...(await timeEach(k, async () => check(await fileDialogOn(guestApp, 'OpenFile', 'Bench')), done === 0 ? 20 : 0)));
        local.push(...(await timeEach(k, async () => check(await fileDialogOn(hostApp, 'OpenFile', 'Bench')), done === 0 ? 20 : 0)));
      }
      const f = summarize(forwarded);
      const l = summarize(local);
      return { forwarded: f, local: l, ratioP50: f.p50 / l.p50, ratioP99: f.p99 / l.p99 };
    } finally {
      guestApp.close();
      hostApp.close();
    }
  } finally {
    await world.stop();
  }
}
