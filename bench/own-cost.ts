import { pathToFileURL } from 'node:url';
import { pino } from 'pino';
import { setRootLogger } from '../src/log.js';
import { benchBreakdown, type Breakdown } from './breakdown.js';
import { benchLinkFloor, type LinkFloor } from './link-floor.js';
import { benchRoundTrip, type RoundTrip } from './portal-round-trip.js';
import { fmt } from './stats.js';

/**
 * Issue 8, item 6: our own cost against the right baseline. The rows
 * `npm run bench` prints for it, and a small entry that runs only these
 * figures (no QEMU): `node dist/bench/own-cost.js` (BENCH_N, default 500).
 */
export const OWN_SHARE_TARGET_MS = 1;
export const SANDBOXED_RATIO_TARGET = 2;

type Row = (cols: (string | number)[]) => string;

/** Our own share of a forwarded call at p50: the marked share plus our work around and after the dialog call (see bench/breakdown.ts). */
export function ownShareP50(bd: Breakdown): number {
  return bd.ownShare.p50 + Math.max(0, bd.aroundDialogOursP50) + Math.max(0, bd.afterDialogOursP50);
}

export function roundTripRows(rt: RoundTrip, row: Row): string[] {
  return [
    row(['measure', 'p50 ms', 'p99 ms', 'target']),
    row(['OpenFile, unsandboxed-local (host app)', fmt(rt.local.p50), fmt(rt.local.p99), '']),
    row(['OpenFile, sandboxed-local (Flatpak app)', fmt(rt.sandboxed.p50), fmt(rt.sandboxed.p99), '']),
    row(['  floor: its store without `flatpak info`', fmt(rt.sandboxedFloor.p50), fmt(rt.sandboxedFloor.p99), '']),
    row(['OpenFile, forwarded from a guest', fmt(rt.forwarded.p50), fmt(rt.forwarded.p99), '']),
    row(['ratio forwarded / sandboxed-local', rt.sandboxedRatioP50.toFixed(2), rt.sandboxedRatioP99.toFixed(2), `≤ ${SANDBOXED_RATIO_TARGET} p50${rt.sandboxedRatioP50 <= SANDBOXED_RATIO_TARGET ? '' : ': missed'}`]),
    row(['  forwarded / its floor', rt.floorRatioP50.toFixed(2), rt.floorRatioP99.toFixed(2), '']),
    row(['ratio forwarded / unsandboxed-local', rt.ratioP50.toFixed(2), rt.ratioP99.toFixed(2), '']),
  ];
}

export function breakdownRows(bd: Breakdown, row: Row): string[] {
  return [
    row(['forwarded OpenFile, hop by hop (debug log)', 'p50 ms', 'p99 ms', '']),
    ...bd.hops.map((h) => row([h.hop, fmt(h.p50), fmt(h.p99), ''])),
    row(['  whole call, debug log (marks)', fmt(bd.total.p50), fmt(bd.total.p99), '']),
    row(['  whole call, info log (as shipped)', fmt(bd.totalAtInfo.p50), fmt(bd.totalAtInfo.p99), '']),
    row(['  the backend call alone (from the bench)', fmt(bd.backendCallAlone.p50), fmt(bd.backendCallAlone.p99), '']),
    row(['  GetNameOwner alone (from the bench)', fmt(bd.nameOwnerAlone.p50), fmt(bd.nameOwnerAlone.p99), '']),
    row(["  the store's AddFull alone (from the bench)", fmt(bd.storeGrantAlone.p50), fmt(bd.storeGrantAlone.p99), '']),
    row(['  planted-link guard alone (from the bench)', fmt(bd.plantedLinkGuard.p50), fmt(bd.plantedLinkGuard.p99), '']),
    row(['our share: link both ways, checks before dialog', fmt(bd.ownShare.p50), fmt(bd.ownShare.p99), `≤ ${OWN_SHARE_TARGET_MS} p50${bd.ownShare.p50 <= OWN_SHARE_TARGET_MS ? '' : ': missed'}`]),
    row(['  our work around the dialog call (hop − call)', fmt(bd.aroundDialogOursP50), '', '']),
    row(['  our work after the dialog (grant hop − AddFull)', fmt(bd.afterDialogOursP50), '', '']),
    row(['our own share, all of it (estimate)', fmt(ownShareP50(bd)), '', `≤ ${OWN_SHARE_TARGET_MS} p50${ownShareP50(bd) <= OWN_SHARE_TARGET_MS ? '' : ': missed'}`]),
  ];
}

export function linkRows(hot: LinkFloor, cold: LinkFloor, idleMs: number, row: Row): string[] {
  const r = (label: string, s: LinkFloor) => [
    row([`  ${label}: bare framed JSON`, fmt(s.raw.p50), fmt(s.raw.p99), '']),
    row([`  ${label}: src/protocol, both ends`, fmt(s.ours.p50), fmt(s.ours.p99), '']),
    row([`  ${label}: the same, open's schemas unchecked`, fmt(s.unchecked.p50), fmt(s.unchecked.p99), '']),
  ];
  return [row(['one link round trip alone (2 processes)', 'p50 ms', 'p99 ms', '']), ...r('back to back', hot), ...r(`${idleMs} ms apart`, cold)];
}

async function main(): Promise<void> {
  setRootLogger(pino({ level: 'warn' }, pino.destination(2)));
  const n = Number(process.env.BENCH_N ?? 500);
  const w = [52, 12, 12, 22];
  const row: Row = (cols) => cols.map((c, i) => String(c).padEnd(w[i]!)).join('  ');
  console.log(`OpenFile four ways, N=${n} each (interleaved in blocks of 50) ...`);
  const rt = await benchRoundTrip(n);
  console.log('where a forwarded OpenFile spends its time (hop marks, debug logging on) ...');
  const bd = await benchBreakdown(Math.min(n, 200));
  console.log('one link round trip on its own, back to back and 10 ms apart ...');
  const hot = await benchLinkFloor(4000);
  const cold = await benchLinkFloor(400, 10);
  console.log(['', ...roundTripRows(rt, row), '', ...breakdownRows(bd, row), '', ...linkRows(hot, cold, 10, row)].join('\n'));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(`bench failed: ${(err as Error).stack ?? String(err)}`);
      process.exit(1);
    },
  );
}
