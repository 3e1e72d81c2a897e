import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Bus } from '../src/dbus/bus.js';
import { fileDialogOn, World } from '../src/testbed/world.js';
import { BENCH_CONFIG, summarize, timeEach, type Summary } from './stats.js';

/**
 * A forwarded OpenFile whose host dialog is reached through the host's
 * xdg-desktop-portal (the route before issue 7, and still the route for saves
 * and whenever the backend is uncertain) beside one whose host dialog goes
 * straight to the FileChooser backend that frontend would use (the route
 * OpenFile takes now, so that "Open files read-only" reaches us). Same
 * scripted user, two daemons running at once, interleaved in blocks.
 */
export interface HostRoute {
  frontend: Summary;
  backend: Summary;
  ratioP50: number;
  ratioP99: number;
}

const DIRECT = 'go straight to the desktop\'s FileChooser backend';

export async function benchHostRoute(n: number): Promise<HostRoute> {
  const direct = await World.start([{ name: 'work', label: 'Work' }], { config: BENCH_CONFIG });
  let viaFrontend: World | undefined;
  try {
    viaFrontend = await World.start([{ name: 'work', label: 'Work' }], { config: BENCH_CONFIG, daemonEnv: { XDP_VM_HOST_DIALOG_ROUTE: 'frontend' } });
    const apps: Bus[] = [];
    try {
      const call: Record<'frontend' | 'backend', () => Promise<void>> = { frontend: async () => undefined, backend: async () => undefined };
      for (const [route, world] of [['backend', direct], ['frontend', viaFrontend]] as const) {
        const dir = path.join(world.root, 'alice');
        mkdirSync(dir);
        writeFileSync(path.join(dir, 'bench.txt'), 'x');
        world.dialog.behave(() => ({ response: 0, uris: [`file://${dir}/bench.txt`], writable: false }));
        const app = await Bus.connect(world.guest('work').bus.address);
        apps.push(app);
        call[route] = async () => {
          const r = await fileDialogOn(app, 'OpenFile', 'Bench');
          if (r.response !== 0) throw new Error(`OpenFile (${route}) answered ${r.response}`);
        };
      }
      const samples: Record<'frontend' | 'backend', number[]> = { frontend: [], backend: [] };
      const block = 50;
      for (let done = 0; done < n; done += block) {
        const k = Math.min(block, n - done);
        samples.backend.push(...(await timeEach(k, call.backend, done === 0 ? 20 : 0)));
        samples.frontend.push(...(await timeEach(k, call.frontend, done === 0 ? 20 : 0)));
      }
      // The figure is only worth printing if each daemon took the route it is labelled with.
      const took = (w: World) => w.daemonLog.some((l) => l.includes(DIRECT));
      if (!took(direct) || took(viaFrontend)) throw new Error(`the daemons did not take the routes under test:\n${direct.daemonLog.filter((l) => l.includes('host-dialog')).join('\n')}`);
      const backend = summarize(samples.backend);
      const frontend = summarize(samples.frontend);
      return { frontend, backend, ratioP50: backend.p50 / frontend.p50, ratioP99: backend.p99 / frontend.p99 };
    } finally {
      for (const app of apps) app.close();
    }
  } finally {
    await viaFrontend?.stop();
    await direct.stop();
  }
}
