import { spawnSync } from 'node:child_process';
import { chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setRootLogger } from '../src/log.js';
import { packageRoot } from '../src/paths.js';
import { pino } from 'pino';
import { fileURLToPath } from 'node:url';
import { asUser, lookupUser, TEST_USER } from '../src/testbed/as-user.js';
import { benchBreakdown } from './breakdown.js';
import { benchDocView } from './doc-view.js';
import { benchHostRoute } from './host-route.js';
import { benchRoundTrip } from './portal-round-trip.js';
import { benchScale, benchSingleVmRate } from './scale.js';
import { benchVm } from './vm.js';
import { benchNetwork } from './network.js';
import { benchUsb } from './usb.js';
import { fmt } from './stats.js';
import { benchLinkFloor } from './link-floor.js';
import { breakdownRows, linkRows, roundTripRows } from './own-cost.js';

/**
 * `npm run bench`: every figure next to its baseline from the same run, as a
 * table and as JSON. Medians and p99, never one run.
 */
const N = Number(process.env.BENCH_N ?? 500);
const VMS = Number(process.env.BENCH_VMS ?? 32);
const PER_VM = Number(process.env.BENCH_REQUESTS ?? 5000);

function row(cols: (string | number)[], widths: number[]): string {
  return cols.map((c, i) => String(c).padEnd(widths[i]!)).join('  ');
}

/** Everything measured on a host session alone (no QEMU guest). */
async function sessionFigures() {
  console.log(`OpenFile forwarded, sandboxed-local, unsandboxed-local, N=${N} each (interleaved in blocks of 50) ...`);
  const rt = await benchRoundTrip(N);
  console.log(`forwarded OpenFile, host dialog through the host frontend vs straight to its backend, N=${N} each ...`);
  const route = await benchHostRoute(N);
  console.log(`daemon with ${VMS} simulated VMs, ${PER_VM} pings each, 8 in flight per VM ...`);
  const scale = await benchScale(VMS, PER_VM);
  const solo = await benchSingleVmRate(PER_VM);
  console.log('where a forwarded OpenFile spends its time (hop marks, debug logging on) ...');
  const hops = await benchBreakdown(Math.min(N, 200));
  console.log('one link round trip on its own, back to back and 10 ms apart ...');
  const link = { hot: await benchLinkFloor(4000), cold: await benchLinkFloor(400, 10) };
  console.log('per-VM document view: by-app of one store vs. one store per VM ...');
  const docView = await benchDocView(200);
  return { rt, route, scale, solo, hops, link, docView };
}
type SessionFigures = Awaited<ReturnType<typeof sessionFigures>>;

/**
 * The host daemon never runs as root (README "Tests"), and these figures read
 * the user's document store as the user does: run as root, they are taken by
 * a child run as the test user scripts/setup.sh creates, which hands them
 * back as JSON. The QEMU part stays here, as the e2e tier does, its host
 * session the user's.
 */
async function sessionFiguresAsUser(): Promise<SessionFigures> {
  if (process.getuid?.() !== 0) return sessionFigures();
  const user = lookupUser(TEST_USER);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'xdp-vm-bench-'));
  chownSync(dir, user.uid, user.gid);
  const out = path.join(dir, 'session.json');
  try {
    console.log(`(the host-session figures run as ${user.name}, never as root)`);
    const [file, args] = asUser(user, process.execPath, [fileURLToPath(import.meta.url)]);
    const env: NodeJS.ProcessEnv = { ...process.env, HOME: user.home, USER: user.name, LOGNAME: user.name, XDP_VM_BENCH_SESSION_OUT: out };
    // Root's session, if any, is not the user's.
    delete env.XDG_RUNTIME_DIR;
    delete env.DBUS_SESSION_BUS_ADDRESS;
    const r = spawnSync(file, args, { stdio: 'inherit', env });
    if (r.status !== 0) throw new Error(`the host-session figures, run as ${user.name}, failed (exit ${r.status ?? r.signal})`);
    return JSON.parse(readFileSync(out, 'utf8')) as SessionFigures;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  setRootLogger(pino({ level: 'warn' }, pino.destination(2)));
  const childOut = process.env.XDP_VM_BENCH_SESSION_OUT;
  if (childOut) {
    writeFileSync(childOut, JSON.stringify(await sessionFigures()));
    return;
  }
  console.log(`xdp-vm bench on ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, Node ${process.version}`);
  const { rt, route, scale, solo, hops, link, docView } = await sessionFiguresAsUser();
  console.log('in a QEMU guest: plug-in, new grants, 256 MiB reads ...');
  // A guest that fails (TCG on a loaded machine) must not take the figures above with it: they are printed, and the run still fails.
  const vm = await benchVm({ plugs: Number(process.env.BENCH_PLUGS ?? 20), grants: Number(process.env.BENCH_GRANTS ?? 20), reads: 3 }).catch((err: Error) => err);
  console.log('two QEMU guests and the privileged helper: NIC hot-plug, VM↔VM ping ...');
  const net = await benchNetwork({ joins: Number(process.env.BENCH_JOINS ?? 10), pings: Number(process.env.BENCH_PINGS ?? 200) }).catch((err: Error) => err);
  console.log('two QEMU guests, a USB stick from sys-usb into work by USB/IP: attach, sequential read ...');
  const usb = await benchUsb({ attaches: Number(process.env.BENCH_USB_ATTACHES ?? 10), reads: Number(process.env.BENCH_USB_READS ?? 5) }).catch((err: Error) => err);

  const w = [52, 12, 12, 22];
  const r4 = (cols: (string | number)[]) => row(cols, w);
  const lines = [
    ...roundTripRows(rt, r4),
    row(['forwarded, host dialog via the frontend', fmt(route.frontend.p50), fmt(route.frontend.p99), ''], w),
    row(['forwarded, host dialog direct to backend', fmt(route.backend.p50), fmt(route.backend.p99), ''], w),
    row(['ratio direct / via the frontend', route.ratioP50.toFixed(2), route.ratioP99.toFixed(2), ''], w),
    '',
    row(['measure', 'value', 'baseline', 'target'], w),
    row([`daemon RSS, ${VMS} VMs connected (MiB)`, scale.rssConnectedMiB.toFixed(1), `${scale.rssIdleMiB.toFixed(1)} idle`, '≤ 100'], w),
    row([`daemon RSS after the load (MiB)`, scale.rssAfterLoadMiB.toFixed(1), '', '≤ 100'], w),
    row([`requests/s per VM, ${VMS} VMs at once (min)`, scale.perVmRate.min.toFixed(0), `${solo.toFixed(0)} alone`, '≥ 2000'], w),
    row([`requests/s per VM, ${VMS} VMs at once (median)`, scale.perVmRate.median.toFixed(0), '', ''], w),
    row([`requests/s, all VMs together`, scale.totalRate.toFixed(0), '', ''], w),
    row([`requests lost`, scale.lost, '', '0'], w),
  ];
  lines.push('', ...breakdownRows(hops, r4), '', ...linkRows(link.hot, link.cold, 10, r4));
  lines.push('', row(['per-VM document view', 'by-app', 'instance/VM', ''], w));
  const [byApp, inst] = docView;
  lines.push(row(['extra processes per VM', byApp!.extraProcessesPerVm, inst!.extraProcessesPerVm, ''], w));
  lines.push(row(['extra RSS per VM (MiB)', byApp!.extraRssMiBPerVm.toFixed(1), inst!.extraRssMiBPerVm.toFixed(1), ''], w));
  lines.push(row(['start-up per VM (ms)', fmt(byApp!.startMs), fmt(inst!.startMs), ''], w));
  lines.push(row(['grant → readable, p50 (ms)', fmt(byApp!.grantToVisible.p50), fmt(inst!.grantToVisible.p50), ''], w));
  lines.push(row(['grant → readable, p99 (ms)', fmt(byApp!.grantToVisible.p99), fmt(inst!.grantToVisible.p99), ''], w));
  lines.push(row(['64 MiB sequential read (MiB/s)', byApp!.readMiBps.toFixed(0), inst!.readMiBps.toFixed(0), ''], w));
  if (vm instanceof Error) lines.push('', `in a QEMU guest: FAILED: ${vm.message}`);
  else {
    const r = vm.read256;
    lines.push('', `in a QEMU guest, ${vm.accel}`);
    lines.push(row(['measure', 'p50 ms', 'p99 ms', 'target'], w));
    lines.push(row(['plug-in → file readable (chardev-add … read)', fmt(vm.plugToReadable.p50), fmt(vm.plugToReadable.p99), '≤ 150 (TCG)'], w));
    lines.push(row(['response sent → first byte read (new grant)', fmt(vm.responseToFirstByte.p50), fmt(vm.responseToFirstByte.p99), '≤ 50'], w));
    lines.push(row(['256 MiB sequential read, median MiB/s', 'value', 'baseline', 'target'], w));
    lines.push(row(['  document view (virtio-fs over the store)', r.documentView.p50.toFixed(0), '', '≥ 0.5 × folder share'], w));
    lines.push(row(['  folder share (xdp-vm share add; its VM\'s share cache, default none)', r.folderShare.p50.toFixed(0), '', ''], w));
    lines.push(row(['  folder shared by hand, root virtiofsd, cache=none', r.directShareNone.p50.toFixed(0), '', ''], w));
    lines.push(row(['  plain read on the host', '', r.hostRead.p50.toFixed(0), ''], w));
    lines.push(row(['  document view / folder share', (r.documentView.p50 / r.folderShare.p50).toFixed(2), '', '≥ 0.5'], w));
    lines.push(row(['  folder share / host read', (r.folderShare.p50 / r.hostRead.p50).toFixed(2), '', '≥ 0.9'], w));
  }
  if (net instanceof Error) lines.push('', `networks in QEMU guests: FAILED: ${net.message}`);
  else {
    lines.push('', 'networks, two QEMU guests on a vm-only bridge');
    lines.push(row(['measure', 'p50 ms', 'p99 ms', ''], w));
    lines.push(row(['AttachNetwork → NIC present in the guest', fmt(net.joinToNic.p50), fmt(net.joinToNic.p99), ''], w));
    lines.push(row(['  baseline: guest agent round trip (the wait\'s own cost)', fmt(net.agentRoundTrip.p50), fmt(net.agentRoundTrip.p99), ''], w));
    lines.push(row(['VM↔VM ping, hot-plugged NICs (tap, vm-only bridge)', fmt(net.pingHotplugged.p50), fmt(net.pingHotplugged.p99), ''], w));
    lines.push(row(['  baseline: NICs the VMs booted with (QEMU stream link)', fmt(net.pingBootNic.p50), fmt(net.pingBootNic.p99), ''], w));
  }
  if (usb instanceof Error) lines.push('', `USB in QEMU guests: FAILED: ${usb.message}`);
  else {
    lines.push('', `USB, a ${usb.stickMiB} MiB stick from VM sys-usb into VM work by USB/IP (two QEMU guests)`);
    lines.push(row(['measure', 'p50', 'p99', ''], w));
    lines.push(row(['AttachUsb → disk present in the guest (ms)', fmt(usb.attachToDisk.p50), fmt(usb.attachToDisk.p99), ''], w));
    lines.push(row(['  baseline: guest agent round trip (the wait\'s own cost, ms)', fmt(usb.agentRoundTrip.p50), fmt(usb.agentRoundTrip.p99), ''], w));
    lines.push(row(['sequential read in work, through USB/IP (MiB/s)', usb.readUsbip.p50.toFixed(1), usb.readUsbip.min.toFixed(1), 'p99 column: slowest'], w));
    lines.push(row(['  baseline: the same stick read in sys-usb (MiB/s)', usb.readNative.p50.toFixed(1), usb.readNative.min.toFixed(1), ''], w));
  }
  console.log(`\n${lines.join('\n')}`);
  const file = path.join(packageRoot(), 'bench-results.json');
  writeFileSync(file, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, roundTrip: rt, hostRoute: route, hops, link, docView, vm: vm instanceof Error ? { error: vm.message } : vm, network: net instanceof Error ? { error: net.message } : net, usb: usb instanceof Error ? { error: usb.message } : usb, scale: { ...scale, soloRate: solo } }, null, 2)}\n`);
  console.log(`\nwrote ${file}`);
  if (vm instanceof Error) throw vm;
  if (net instanceof Error) throw net;
  if (usb instanceof Error) throw usb;
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench failed: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
