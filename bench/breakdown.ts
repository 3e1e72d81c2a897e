import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Bus } from '../src/dbus/bus.js';
import { now } from '../src/trace.js';
import { fileChooserHops, lastMarks } from '../src/testbed/hops.js';
import { fileDialogOn, World } from '../src/testbed/world.js';
import { BENCH_CONFIG, summarize, type Summary } from './stats.js';

/** Where a forwarded OpenFile spends its time: per-hop medians from the processes' own hop marks. */
export async function benchBreakdown(n: number): Promise<{ hop: string; p50: number; p99: number }[]> {
  const previous = process.env.XDP_VM_LOG_LEVEL;
  process.env.XDP_VM_LOG_LEVEL = 'debug';
  const world = await World.start([{ name: 'work' }], { config: BENCH_CONFIG }).finally(() => {
    if (previous === undefined) delete process.env.XDP_VM_LOG_LEVEL;
    else process.env.XDP_VM_LOG_LEVEL = previous;
  });
  try {
    const dir = path.join(world.root, 'alice');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'b.txt'), 'x');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${dir}/b.txt`] }));
    const app = await Bus.connect(world.guest('work').bus.address);
    const perHop = new Map<string, number[]>();
    try {
      for (let i = 0; i < n + 10; i++) {
        const t0 = now();
        await fileDialogOn(app, 'OpenFile', 'Bench');
        const t1 = now();
        await new Promise((r) => setTimeout(r, 5)); // let the log lines arrive
        if (i < 10) continue;
        const marks = lastMarks([...world.daemonLog.slice(-50), ...world.guest('work').bus.log.slice(-50)], t0);
        for (const row of fileChooserHops(t0, t1, marks)) perHop.set(row.hop, [...(perHop.get(row.hop) ?? []), row.ms]);
      }
    } finally {
      app.close();
    }
    return [...perHop].map(([hop, samples]) => {
      const s: Summary = summarize(samples);
      return { hop, p50: s.p50, p99: s.p99 };
    });
  } finally {
    await world.stop();
  }
}
