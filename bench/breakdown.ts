import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Bus } from '../src/dbus/bus.js';
import { DocumentStore } from '../src/host/documents.js';
import { plantedLinkProblem, vmWritableFolders } from '../src/host/planted-links.js';
import { callBackendRequest } from '../src/dbus/backend-request.js';
import { SCRIPTED_BUS_NAME } from '../src/testbed/scripted-dialog.js';
import { optionsToVardict } from '../portals/file-chooser/options.js';
import { now } from '../src/trace.js';
import { lastMarks } from '../src/testbed/hops.js';
import { fileDialogOn, World } from '../src/testbed/world.js';
import { BENCH_CONFIG, summarize, timeEach, type Summary } from './stats.js';

/**
 * Where a forwarded OpenFile spends its time, from the processes' own hop
 * marks (src/trace.ts; debug lines, so this run logs at debug and is a little
 * slower than the round-trip figures). The host dialog is reached the way
 * OpenFile reaches it now: the daemon calls the desktop's FileChooser
 * backend itself (portals/file-chooser/host-dialog.ts), no host frontend.
 *
 * Our own share of a call is what no stock part does: the link both ways
 * (our guest backend's forward and the daemon's decode, and the daemon's
 * answer back to the guest backend) plus the daemon's checks before the
 * dialog (policy, options, path translation):
 *
 *   (host.received − guest.received) + (host.dialog-called − host.received)
 *     + (guest.answered − host.granted)
 *
 * The last term includes making sure the VM's share is there (nothing to do
 * once it is). Not counted in it: the guest frontend on both sides of our
 * backend, the dialog (the backend's own call and answer) and the hop from
 * the dialog's answer to the grant, which is the store's AddFull (a Flatpak
 * app pays it too) but also our checks after the dialog (estimated apart,
 * below). Each sample's share is summed before the quantiles are taken.
 */
export interface Breakdown {
  hops: { hop: string; p50: number; p99: number }[];
  ownShare: Summary;
  /** The whole call, app side, in this debug-logging run. */
  total: Summary;
  /** The whole call in the deployment logging at info, interleaved with the marked one. */
  totalAtInfo: Summary;
  /**
   * The grant hop holds our checks after the dialog too (chosen paths, the
   * planted-link guard, the audit line) and no mark separates them from the
   * store's AddFull. So the same AddFull the daemon makes (DocumentStore.grant)
   * and the planted-link guard (vmWritableFolders, plantedLinkProblem) are
   * also timed on their own, from the bench process, on the info deployment.
   */
  storeGrantAlone: Summary;
  plantedLinkGuard: Summary;
  /**
   * The dialog hop likewise: the daemon's own call to the backend
   * (callBackendRequest, the scripted user answering at once) timed alone,
   * and the GetNameOwner it asks the bus first on every OpenFile
   * (host-dialog.ts backendOf → portalOwner, to notice a restarted frontend).
   */
  backendCallAlone: Summary;
  nameOwnerAlone: Summary;
  /** p50 of the dialog hop less the backend call alone: our work around the dialog call; an estimate. */
  aroundDialogOursP50: number;
  /** p50 of the grant hop less the store's AddFull alone: our work after the dialog; an estimate. */
  afterDialogOursP50: number;
}

export const OWN_SHARE_ROWS = new Set(['guest backend → host daemon (link)', 'host daemon: policy, option checks, path translation', 'host daemon → guest backend (share check, link)']);

export const DIALOG_ROW = "host dialog: desktop's FileChooser backend, direct";
export const GRANT_ROW = 'path checks, planted-link guard, AddFull, audit';

function need(marks: Map<string, number>, k: string): number {
  const v = marks.get(k);
  if (v === undefined) throw new Error(`no "${k}" mark: run with XDP_VM_LOG_LEVEL=debug`);
  return v;
}

/** The forwarded OpenFile, hop by hop, as the direct host-dialog route takes it. */
export function forwardedHops(start: number, end: number, marks: Map<string, number>): { hop: string; ms: number }[] {
  const m = (k: string) => need(marks, k);
  return [
    { hop: 'app → guest xdg-desktop-portal → guest backend', ms: m('guest.received') - start },
    { hop: 'guest backend → host daemon (link)', ms: m('host.received') - m('guest.received') },
    { hop: 'host daemon: policy, option checks, path translation', ms: m('host.dialog-called') - m('host.received') },
    { hop: DIALOG_ROW, ms: m('host.dialog-answered') - m('host.dialog-called') },
    { hop: GRANT_ROW, ms: m('host.granted') - m('host.dialog-answered') },
    { hop: 'host daemon → guest backend (share check, link)', ms: m('guest.answered') - m('host.granted') },
    { hop: 'guest backend → guest xdg-desktop-portal → app', ms: end - m('guest.answered') },
  ];
}

function scriptUser(world: World): void {
  const dir = path.join(world.root, 'alice');
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'b.txt'), 'x');
  world.dialog.behave(() => ({ response: 0, uris: [`file://${dir}/b.txt`] }));
}

/**
 * The marks are debug lines, each a synchronous write to a pipe (40–60 µs
 * here, bench/profile-forwarded.ts BENCH_PROFILE_WRITES=1 measures it), and
 * 4 of the 7 a call adds fall inside our share (guest.received's before the
 * frame leaves, host.received's before the checks, host.granted's and
 * host.share-ready's before the answer goes back): the marked share is a
 * little more than the shipped one. A second deployment logging at info, as
 * shipped, runs interleaved with the marked one, for its whole call.
 */
export const DEBUG_LINES_PER_CALL = 7;
export const DEBUG_LINES_IN_OWN_SHARE = 4;

export async function benchBreakdown(n: number): Promise<Breakdown> {
  const previous = process.env.XDP_VM_LOG_LEVEL;
  process.env.XDP_VM_LOG_LEVEL = 'debug';
  const world = await World.start([{ name: 'work' }], { config: BENCH_CONFIG }).finally(() => {
    if (previous === undefined) delete process.env.XDP_VM_LOG_LEVEL;
    else process.env.XDP_VM_LOG_LEVEL = previous;
  });
  let quiet: World | undefined;
  const apps: Bus[] = [];
  try {
    quiet = await World.start([{ name: 'work' }], { config: { ...BENCH_CONFIG } });
    scriptUser(world);
    scriptUser(quiet);
    const storeBus = await Bus.connect(quiet.hostBus.address, { unixFds: true });
    apps.push(storeBus);
    const docs = await DocumentStore.open(storeBus);
    const chosen = Buffer.from(path.join(quiet.root, 'alice', 'b.txt'));
    const storeAlone: number[] = [];
    const guard: number[] = [];
    const backendAlone: number[] = [];
    const ownerAlone: number[] = [];
    const dialogOptions = optionsToVardict('open', { accept_label: '_Open (work)' });
    const pause = () => new Promise((r) => setTimeout(r, 5));
    const app = await Bus.connect(world.guest('work').bus.address);
    apps.push(app);
    const quietApp = await Bus.connect(quiet.guest('work').bus.address);
    apps.push(quietApp);
    const perHop = new Map<string, number[]>();
    const own: number[] = [];
    const total: number[] = [];
    const info: number[] = [];
    const block = 20;
    for (let i = -10; i < n; i++) {
      const t0 = now();
      await fileDialogOn(app, 'OpenFile', 'Bench');
      const t1 = now();
      await new Promise((r) => setTimeout(r, 5)); // let the log lines arrive
      if (i >= 0) {
        const marks = lastMarks([...world.daemonLog.slice(-50), ...world.guest('work').bus.log.slice(-50)], t0);
        let mine = 0;
        for (const row of forwardedHops(t0, t1, marks)) {
          perHop.set(row.hop, [...(perHop.get(row.hop) ?? []), row.ms]);
          if (OWN_SHARE_ROWS.has(row.hop)) mine += row.ms;
        }
        own.push(mine);
        total.push(t1 - t0);
      }
      // The same number of calls at info level, in blocks between the marked ones, with the same pause.
      if ((i + 11) % block === 0) {
        info.push(
          ...(await timeEach(block, async () => void (await fileDialogOn(quietApp, 'OpenFile', 'Bench')), i < block ? 10 : 0, pause)),
        );
        storeAlone.push(...(await timeEach(block, async () => void (await docs.grant('work', chosen, { write: false })), i < block ? 5 : 0, pause)));
        guard.push(
          ...(await timeEach(
            block,
            async () => {
              const problem = await plantedLinkProblem(chosen, () => vmWritableFolders(docs, []));
              if (problem) throw new Error(problem);
            },
            i < block ? 5 : 0,
            pause,
          )),
        );
        backendAlone.push(
          ...(await timeEach(
            block,
            async () => {
              const r = await callBackendRequest(storeBus, { destination: SCRIPTED_BUS_NAME, interface: 'org.freedesktop.impl.portal.FileChooser', member: 'OpenFile', args: ['', '', 'work: Bench'], options: dialogOptions });
              if (r.response !== 0) throw new Error(`the backend alone answered ${r.response}`);
            },
            i < block ? 5 : 0,
            pause,
          )),
        );
        ownerAlone.push(...(await timeEach(block, async () => void (await storeBus.nameOwner('org.freedesktop.portal.Desktop')), i < block ? 5 : 0, pause)));
      }
    }
    const hops = [...perHop].map(([hop, samples]) => {
      const s: Summary = summarize(samples);
      return { hop, p50: s.p50, p99: s.p99 };
    });
    const ownShare = summarize(own);
    const debug = summarize(total);
    const atInfo = summarize(info);
    const storeGrantAlone = summarize(storeAlone);
    const grantHop = hops.find((h) => h.hop === GRANT_ROW)!;
    const dialogHop = hops.find((h) => h.hop === DIALOG_ROW)!;
    const backendCallAlone = summarize(backendAlone);
    return {
      hops,
      ownShare,
      total: debug,
      totalAtInfo: atInfo,
      storeGrantAlone,
      plantedLinkGuard: summarize(guard),
      afterDialogOursP50: grantHop.p50 - storeGrantAlone.p50,
      backendCallAlone,
      nameOwnerAlone: summarize(ownerAlone),
      aroundDialogOursP50: dialogHop.p50 - backendCallAlone.p50,
    };
  } finally {
    for (const a of apps) a.close();
    await quiet?.stop();
    await world.stop();
  }
}
