import path from 'node:path';
import { pino } from 'pino';
import { Bus } from '../src/dbus/bus.js';
import { setRootLogger } from '../src/log.js';
import { lastMarks, vmFileChooserHops, type HopRow } from '../src/testbed/hops.js';
import { processesMatching } from '../src/testbed/processes.js';
import { World } from '../src/testbed/world.js';
import { bootPortalVm, type AppResult, type PortalVm } from '../src/testbed/qemu/portal-vm.js';

/**
 * `npm run demo`: an app in a micro-VM asks for a file; the host dialog
 * answers; the app reads the file through the share the host plugged into the
 * VM. Prints each hop with its time, and leaves nothing running.
 *
 * On a desktop (a display and a session bus with xdg-desktop-portal) the
 * daemon runs on your session and your own file dialog opens; elsewhere it
 * runs on a private session and a scripted user answers. It says which.
 */
const say = (s = '') => console.log(s);
const secs = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

async function desktopSession(): Promise<string | undefined> {
  if (!process.env.DISPLAY && !process.env.WAYLAND_DISPLAY) return undefined;
  if (!process.env.DBUS_SESSION_BUS_ADDRESS) return undefined;
  try {
    const bus = await Bus.connect(process.env.DBUS_SESSION_BUS_ADDRESS);
    try {
      const [names] = (await bus.call({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'ListActivatableNames' })) as [string[]];
      return names.includes('org.freedesktop.portal.Desktop') ? (process.env.WAYLAND_DISPLAY ? `Wayland ${process.env.WAYLAND_DISPLAY}` : `X11 ${process.env.DISPLAY}`) : undefined;
    } finally {
      bus.close();
    }
  } catch {
    return undefined;
  }
}

function table(rows: [string, string, string][]): void {
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [a, b, c] of rows) say(`  ${a.padEnd(w)}  ${b.padStart(11)}  ${c.padStart(11)}`);
}

async function roundTrip(world: World, vm: PortalVm): Promise<{ app: AppResult; hops: HopRow[] }> {
  const hostLines = world.daemonLog.length;
  const app = await vm.app(['open', 'Open Report']);
  if (app.response !== 0 || !app.files[0]?.content) throw new Error(`the app got response ${app.response}: ${JSON.stringify(app.files)}`);
  const guestLog = (await vm.sh('cat /run/session.log')).split('\n');
  const hops = vmFileChooserHops({ ...app, readMs: app.files[0].readMs }, lastMarks(guestLog, app.t0), lastMarks(world.daemonLog.slice(hostLines), 0));
  return { app, hops };
}

async function main(): Promise<number> {
  setRootLogger(pino({ level: 'warn' }, pino.destination(2)));
  process.env.XDP_VM_LOG_LEVEL = 'debug';
  const desktop = await desktopSession();
  say(desktop ? `Host: your desktop session (${desktop}): your own file dialog will open, titled "Work: Open Report". Pick a text file.` : 'Host: no desktop session here (no display, or no xdg-desktop-portal on the session bus), so the host side runs on a private session and a scripted user answers the host dialog.');
  const world = await World.start([{ name: 'work', label: 'Work', qemu: true }], { userSession: !!desktop });
  let vm: PortalVm | undefined;
  let ok = false;
  try {
    if (!desktop) {
      if (world.user && world.user.uid !== process.getuid?.()) say(`The host session (its bus, portals, document store and the daemon) runs as the ordinary user ${world.user.name}, never as root.`);
      const reports = world.hostDir(path.join(world.root, 'alice', 'Reports'));
      world.hostFile(path.join(reports, 'q3.txt'), 'Q3 revenue: 4.2M\n');
      world.dialog.behave(() => ({ response: 0, uris: [`file://${reports}/q3.txt`] }));
    }
    say('Booting a micro-VM "work" (Debian kernel, busybox initramfs, the host\'s / read-only as its root) ...');
    const t0 = Date.now();
    vm = await bootPortalVm(world, 'work');
    const setupMs = Date.now() - t0 - vm.guest.timings.agentReadyMs - vm.guest.timings.imageMs - vm.guest.timings.rootShareMs;
    say(`  ${vm.guest.accel.accel.toUpperCase()} (${vm.guest.accel.why}); agent ready ${secs(vm.guest.timings.agentReadyMs)} after QEMU started`);
    say('The app in the VM asks for a file (twice: the first call starts the portals) ...');
    const cold = await roundTrip(world, vm);
    const warm = await roundTrip(world, vm);
    say(`\nThe app got ${cold.app.files[0]!.path}\nand read: ${JSON.stringify(cold.app.files[0]!.content)}\n`);
    table([
      ['hop', 'first call', 'second call'],
      ['VM boot: QEMU start → guest agent ready', secs(vm.guest.timings.agentReadyMs), ''],
      ['guest setup: install-guest, session bus, mount agent', secs(setupMs), ''],
      ...cold.hops.map((h, i): [string, string, string] => [h.hop, `${h.ms.toFixed(1)} ms`, `${warm.hops[i]!.ms.toFixed(1)} ms`]),
      ['total, as the app saw it', `${cold.app.ms.toFixed(1)} ms`, `${warm.app.ms.toFixed(1)} ms`],
    ]);
    say('  (the first call includes D-Bus activation of the guest\'s xdg-desktop-portal and our backend under emulation)');
    ok = true;
  } finally {
    if (vm) {
      await world.cli(['grants', 'revoke', 'work', '--all']).catch(() => undefined);
      const report = await vm.guest.shutdown().catch(() => undefined);
      say(report ? `\nVM powered off in ${report.ms} ms.` : '\nVM stopped.');
    }
    const root = world.root;
    await world.stop();
    const left = [...processesMatching(root), ...(vm ? processesMatching(vm.guest.workDir) : [])];
    say(left.length ? `STILL RUNNING: ${left.map((p) => p.cmdline).join('; ')}` : 'Nothing left running.');
    if (left.length) ok = false;
  }
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`demo failed: ${(err as Error).message}`);
    process.exit(1);
  },
);
