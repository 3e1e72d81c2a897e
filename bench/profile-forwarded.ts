import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Bus } from '../src/dbus/bus.js';
import { startService, type Service } from '../src/exec.js';
import { CONTROL_BUS_NAME } from '../src/host/control.js';
import { cliEntry, NODE_FLAGS, packageRoot } from '../src/paths.js';
import { fileDialogOn, World } from '../src/testbed/world.js';
import { BENCH_CONFIG, summarize, timeEach } from './stats.js';

/**
 * Where our own processes spend their CPU on a forwarded OpenFile: the host
 * daemon and the guest backend run under `node --cpu-prof` (the guest
 * backend started by hand on the guest bus, before its frontend would
 * activate it, with the command line its .service file has), the app makes
 * N calls, both exit cleanly and write their profiles, and their samples are
 * added up per function and per part of the code, in µs per call.
 *
 *   node dist/bench/profile-forwarded.js      (BENCH_N, default 500; profiles kept in .cache/bench-profiles/)
 *
 * BENCH_PROFILE_CPU=0 runs without the profiler; BENCH_PROFILE_WRITES=1
 * preloads bench/write-timer.ts into both, which times each synchronous
 * log/audit line write; BENCH_PROFILE_BUNDLE=1 runs the bundle the product
 * ships instead of the tsc output of the same sources (whose profile names
 * each module); BENCH_PROFILE_NODE_FLAGS adds Node flags to both.
 */
interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Which part of the code a frame belongs to. */
function partOf(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native)';
  const u = url.replace(/^file:\/\//, '');
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(u);
  if (m) return m[1]!;
  if (u.startsWith('node:')) return `node:${u.slice(5).split('/')[0]}`;
  const rel = path.relative(packageRoot(), u).replace(/^dist\//, '');
  if (rel.startsWith('..')) return u;
  const parts = rel.split('/');
  return parts.length > 2 ? parts.slice(0, 2).join('/') : parts[0]!;
}

export interface ProfileSummary {
  process: string;
  wallMs: number;
  /** µs of samples per call, by part of the code, most first. */
  byPart: { part: string; usPerCall: number }[];
  byFunction: { fn: string; usPerCall: number }[];
  /** Our own functions (src/, portals/) with everything they called, µs per call. */
  inclusive: { fn: string; usPerCall: number }[];
}

export function summarizeProfile(file: string, processName: string, calls: number, window?: { from: number; to: number }): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const part = new Map<string, number>();
  const fn = new Map<string, number>();
  const incl = new Map<string, number>();
  const label = (cf: CpuProfile['nodes'][number]['callFrame']) => `${cf.functionName || '(anonymous)'} ${partOf(cf.url, cf.functionName)}:${cf.lineNumber + 1}`;
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i]!;
    const d = p.timeDeltas[i + 1] ?? 0;
    if (window && (t < window.from || t > window.to)) continue;
    const node = byId.get(p.samples[i]!)!;
    const { url, functionName, lineNumber } = node.callFrame;
    if (functionName === '(idle)') continue;
    const k = partOf(url, functionName);
    part.set(k, (part.get(k) ?? 0) + d);
    const f = `${functionName || '(anonymous)'} ${k}:${lineNumber + 1}`;
    fn.set(f, (fn.get(f) ?? 0) + d);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const cf = byId.get(id)!.callFrame;
      const ours = /^(src|portals)\//.test(partOf(cf.url, cf.functionName));
      const l = label(cf);
      if (ours && !seen.has(l)) {
        seen.add(l);
        incl.set(l, (incl.get(l) ?? 0) + d);
      }
    }
  }
  const top = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).map(([k, us]) => ({ k, us: us / calls }));
  return {
    process: processName,
    wallMs: (p.endTime - p.startTime) / 1000,
    byPart: top(part).map(({ k, us }) => ({ part: k, usPerCall: us })),
    byFunction: top(fn).slice(0, 25).map(({ k, us }) => ({ fn: k, usPerCall: us })),
    inclusive: top(incl).slice(0, 30).map(({ k, us }) => ({ fn: k, usPerCall: us })),
  };
}

async function main(): Promise<void> {
  const n = Number(process.env.BENCH_N ?? 500);
  const out = path.join(packageRoot(), '.cache', 'bench-profiles');
  mkdirSync(out, { recursive: true });
  const dirs = { daemon: path.join(out, 'daemon'), guest: path.join(out, 'guest') };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  // This Node refuses --cpu-prof in NODE_OPTIONS, so both are started here with the command lines World and the .service file use.
  const writes = process.env.BENCH_PROFILE_WRITES === '1';
  const extra = [
    ...(process.env.BENCH_PROFILE_NODE_FLAGS ?? '').split(' ').filter(Boolean),
    ...(writes ? ['--import', pathToFileURL(path.join(packageRoot(), 'dist', 'bench', 'write-timer.js')).href] : []),
  ];
  const cpu = process.env.BENCH_PROFILE_CPU !== '0';
  // The bundle lumps every module into chunks; the tsc output of the same code keeps them apart in the profile.
  const entry = process.env.BENCH_PROFILE_BUNDLE === '1' ? cliEntry() : path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
  const prof = (dir: string) => [...(cpu ? ['--cpu-prof', `--cpu-prof-dir=${dir}`, '--cpu-prof-interval=100'] : []), ...extra];
  const world = await World.start([{ name: 'work', label: 'Work' }], { config: BENCH_CONFIG });
  let daemon: Service | undefined;
  try {
    await world.stopDaemon();
    daemon = startService('xdp-vm host (profiled)', process.execPath, [...NODE_FLAGS, ...prof(dirs.daemon), entry, 'host', '--config', world.configPath], { env: world.hostBus.env });
    const hostBus = await Bus.connect(world.hostBus.address);
    try {
      const deadline = Date.now() + 20_000;
      while (!(await hostBus.nameOwner(CONTROL_BUS_NAME))) {
        if (!daemon.running || Date.now() > deadline) throw new Error(`the profiled daemon did not start: ${daemon.stderr}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    } finally {
      hostBus.close();
    }
    const dir = path.join(world.root, 'alice');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'bench.txt'), 'x');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${dir}/bench.txt`] }));
    const guestBus = world.guest('work').bus;
    const backend = startService('xdp-vm guest (profiled)', process.execPath, [...NODE_FLAGS, ...prof(dirs.guest), entry, 'guest'], { env: guestBus.env });
    const app = await Bus.connect(guestBus.address);
    try {
      const deadline = Date.now() + 20_000;
      while (!(await app.nameOwner('org.freedesktop.impl.portal.desktop.vm'))) {
        if (!backend.running || Date.now() > deadline) throw new Error(`the profiled guest backend did not start: ${backend.stderr}`);
        await new Promise((r) => setTimeout(r, 25));
      }
      const call = async () => {
        const r = await fileDialogOn(app, 'OpenFile', 'Bench');
        if (r.response !== 0) throw new Error(`OpenFile answered ${r.response}`);
      };
      await timeEach(50, call, 50); // warm up every process
      // V8 stamps profile samples with the monotonic clock in µs, which is process.hrtime's.
      const mono = () => Number(process.hrtime.bigint() / 1000n);
      const from = mono();
      const samples = await timeEach(n, call, 0);
      const to = mono();
      const s = summarize(samples);
      console.log(`forwarded OpenFile ${cpu ? 'under --cpu-prof' : 'not profiled'}, N=${n}: p50 ${s.p50.toFixed(2)} ms, p99 ${s.p99.toFixed(2)} ms`);
      app.close();
      await backend.stop();
      await daemon.stop();
      if (writes) {
        for (const [name, svc] of [['daemon', daemon], ['guest', backend]] as const) {
          const line = svc.stderr.split('\n').findLast((l) => l.startsWith('WRITESYNC '));
          const byFd = line ? (JSON.parse(line.slice('WRITESYNC '.length)) as Record<string, { n: number; p50: number; p99: number; meanUs: number }>) : {};
          console.log(`${name}: synchronous writes (log and audit lines), whole run:`);
          for (const [fd, w] of Object.entries(byFd)) console.log(`  fd ${fd}${fd === '2' ? ' (stderr)' : ''}: ${w.n} writes, p50 ${w.p50.toFixed(0)} µs, p99 ${w.p99.toFixed(0)} µs, mean ${w.meanUs.toFixed(0)} µs`);
        }
      }
      for (const [name, d] of cpu ? Object.entries(dirs) : []) {
        const files = readdirSync(d).filter((f) => f.endsWith('.cpuprofile')).sort();
        const file = path.join(d, files.at(-1)!);
        const sum = summarizeProfile(file, name, n, { from, to });
        console.log(`\n${name} (${file}), CPU µs per call while the N calls ran, by part:`);
        for (const r of sum.byPart.slice(0, 14)) console.log(`  ${r.usPerCall.toFixed(1).padStart(8)}  ${r.part}`);
        console.log('  top functions:');
        for (const r of sum.byFunction.slice(0, 18)) console.log(`  ${r.usPerCall.toFixed(1).padStart(8)}  ${r.fn}`);
        console.log('  our functions, with what they call:');
        for (const r of sum.inclusive.slice(0, 25)) console.log(`  ${r.usPerCall.toFixed(1).padStart(8)}  ${r.fn}`);
      }
    } finally {
      app.close();
      await backend.stop();
    }
  } finally {
    await daemon?.stop();
    await world.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(`profile failed: ${(err as Error).stack ?? String(err)}`);
      process.exit(1);
    },
  );
}
