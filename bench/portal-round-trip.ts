import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Bus } from '../src/dbus/bus.js';
import { fileDialogOn, World } from '../src/testbed/world.js';
import { pathWithout, SANDBOXED_APP_ID, startSandboxedApp, type SandboxedApp } from './sandbox.js';
import { BENCH_CONFIG, summarize, timeEach, type Summary } from './stats.js';

/**
 * One OpenFile three ways, in one run, from an app's side (call → Response):
 *
 *  - forwarded: a guest-session app → guest xdg-desktop-portal → our guest
 *    backend → link → host daemon → the desktop's FileChooser backend (the
 *    scripted user, called directly: the OpenFile route since issue 7) →
 *    document store grant for the VM → back;
 *  - sandboxed-local: a host app that the host xdg-desktop-portal takes for
 *    a Flatpak app (bubblewrap, /.flatpak-info; bench/sandbox.ts) → host
 *    frontend → the same backend → the frontend's document store grant for
 *    the app → back: what a Flatpak user pays;
 *  - unsandboxed-local: a plain host app → host frontend → the same backend
 *    → back, no grant;
 *  - sandboxed-local, floor: the same sandboxed app in a second host session
 *    whose document store finds no `flatpak` program. The stock store (1.16
 *    document-portal.c, app_has_file_access) runs `flatpak info
 *    --file-access=PATH APP` for every file an AddFull with
 *    as-needed-by-app names, which is most of what a Flatpak user's grant
 *    costs; without the program it takes its quick fallback. No Flatpak user
 *    has that store, so this is only the floor of what a sandboxed app can pay.
 *
 * Interleaved in blocks so drift on a shared machine hits all three alike.
 * The forwarded call skips the host frontend (the daemon calls the backend
 * itself) where both local calls go through it.
 */
export interface RoundTrip {
  forwarded: Summary;
  local: Summary;
  sandboxed: Summary;
  sandboxedFloor: Summary;
  /** forwarded / unsandboxed-local */
  ratioP50: number;
  ratioP99: number;
  /** forwarded / sandboxed-local */
  sandboxedRatioP50: number;
  sandboxedRatioP99: number;
  /** forwarded / sandboxed-local floor */
  floorRatioP50: number;
  floorRatioP99: number;
}

/** A sandboxed app on `world`'s host bus, checked to be taken for a Flatpak app and granted a document. */
async function sandboxedAppOn(world: World): Promise<SandboxedApp> {
  const app = await startSandboxedApp({ hostBusAddress: world.hostBus.address, dir: path.join(world.root, 'sandbox') });
  try {
    const probe = await app.run(1, 0);
    const asked = world.dialog.calls.at(-1)?.appId;
    const uri = probe.uris[0] ?? '';
    if (asked !== SANDBOXED_APP_ID || !uri.startsWith(`file://${world.docMount}/`)) {
      throw new Error(`the sandboxed app was not treated as the Flatpak app ${SANDBOXED_APP_ID}: the dialog saw app id "${asked}", the app got ${uri || 'no URI'}`);
    }
  } catch (err) {
    await app.close();
    throw err;
  }
  return app;
}

function scriptUser(world: World): void {
  const dir = path.join(world.root, 'alice');
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'bench.txt'), 'x');
  world.dialog.behave(() => ({ response: 0, uris: [`file://${dir}/bench.txt`] }));
}

export async function benchRoundTrip(n: number): Promise<RoundTrip> {
  const world = await World.start([{ name: 'work', label: 'Work' }], { config: BENCH_CONFIG });
  let floorWorld: World | undefined;
  const pathBefore = process.env.PATH;
  try {
    // The floor's host session (and so its document store) gets a PATH without flatpak.
    process.env.PATH = pathWithout('flatpak', path.join(world.root, 'path-without-flatpak'));
    floorWorld = await World.start([], { config: BENCH_CONFIG, guests: false }).finally(() => (process.env.PATH = pathBefore));
    scriptUser(world);
    scriptUser(floorWorld);
    const guestApp = await Bus.connect(world.guest('work').bus.address);
    const hostApp = await Bus.connect(world.hostBus.address);
    const apps: SandboxedApp[] = [];
    const check = (r: { response: number }) => {
      if (r.response !== 0) throw new Error(`round trip answered ${r.response}`);
    };
    try {
      const sandboxed = await sandboxedAppOn(world);
      apps.push(sandboxed);
      const floor = await sandboxedAppOn(floorWorld);
      apps.push(floor);
      const samples = { forwarded: [] as number[], local: [] as number[], sandboxed: [] as number[], floor: [] as number[] };
      const block = 50;
      for (let done = 0; done < n; done += block) {
        const k = Math.min(block, n - done);
        const warmup = done === 0 ? 20 : 0;
        samples.forwarded.push(...(await timeEach(k, async () => check(await fileDialogOn(guestApp, 'OpenFile', 'Bench')), warmup)));
        samples.sandboxed.push(...(await sandboxed.run(k, warmup)).samples);
        samples.local.push(...(await timeEach(k, async () => check(await fileDialogOn(hostApp, 'OpenFile', 'Bench')), warmup)));
        samples.floor.push(...(await floor.run(k, warmup)).samples);
      }
      const f = summarize(samples.forwarded);
      const l = summarize(samples.local);
      const s = summarize(samples.sandboxed);
      const fl = summarize(samples.floor);
      return {
        forwarded: f,
        local: l,
        sandboxed: s,
        sandboxedFloor: fl,
        ratioP50: f.p50 / l.p50,
        ratioP99: f.p99 / l.p99,
        sandboxedRatioP50: f.p50 / s.p50,
        sandboxedRatioP99: f.p99 / s.p99,
        floorRatioP50: f.p50 / fl.p50,
        floorRatioP99: f.p99 / fl.p99,
      };
    } finally {
      guestApp.close();
      hostApp.close();
      for (const app of apps) await app.close();
    }
  } finally {
    await floorWorld?.stop();
    await world.stop();
  }
}
