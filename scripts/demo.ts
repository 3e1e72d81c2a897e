import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { Bus } from '../src/dbus/bus.js';
import { setRootLogger } from '../src/log.js';
import { now } from '../src/trace.js';
import { fileChooserHops, lastMarks } from '../test/helpers/hops.js';
import { processesMatching } from '../test/helpers/processes.js';
import { fileDialogOn, World } from '../test/helpers/world.js';

/**
 * `npm run demo`: one FileChooser round trip through the whole stack on
 * private buses: an app in the "work" session asks for a file, the host
 * dialog (a scripted user here) picks one, and the app reads it through its
 * share. Prints each hop with its time and leaves nothing running.
 */
async function main(): Promise<number> {
  setRootLogger(pino({ level: 'warn' }, pino.destination(2)));
  process.env.XDP_VM_LOG_LEVEL = 'debug';
  console.log('Starting a host session (D-Bus, xdg-desktop-portal, document store, permission store),');
  console.log('the xdp-vm host daemon, and a guest session "work" (D-Bus, xdg-desktop-portal, xdp-vm guest backend) ...');
  const world = await World.start([{ name: 'work', label: 'Work' }]);
  let ok = false;
  try {
    const reports = path.join(world.root, 'alice', 'Reports');
    mkdirSync(reports, { recursive: true });
    writeFileSync(path.join(reports, 'q3.txt'), 'Q3 revenue: 4.2M\n');
    console.log('Host dialog: scripted user (this demo runs on private buses, away from any desktop session)');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${reports}/q3.txt`] }));

    const app = await Bus.connect(world.guest('work').bus.address);
    const trip = async () => {
      const t0 = now();
      const reply = await fileDialogOn(app, 'OpenFile', 'Open Report');
      const t1 = now();
      await new Promise((r) => setTimeout(r, 50));
      const uri = (reply.results.uris?.value as string[] | undefined)?.[0];
      if (reply.response !== 0 || !uri) throw new Error(`the app got response ${reply.response}`);
      const hops = fileChooserHops(t0, t1, lastMarks([...world.daemonLog, ...world.guest('work').bus.log], t0));
      return { uri, hops, total: t1 - t0, content: readFileSync(fileURLToPath(uri), 'utf8') };
    };
    // The first call D-Bus-activates both portal frontends and our guest backend; the second is warm.
    const cold = await trip();
    const warm = await trip().finally(() => app.close());

    console.log(`\nThe host dialog was titled "${world.dialog.calls.at(-1)!.title}".`);
    console.log(`The app got ${warm.uri}\nand read: ${JSON.stringify(warm.content)}\n`);
    const width = Math.max(...cold.hops.map((h) => h.hop.length), 26);
    const ms = (v: number) => `${v.toFixed(2).padStart(8)} ms`;
    console.log(`  ${'hop'.padEnd(width)}  ${'first call'.padStart(11)}  ${'second call'.padStart(11)}`);
    cold.hops.forEach((h, i) => console.log(`  ${h.hop.padEnd(width)}  ${ms(h.ms)}  ${ms(warm.hops[i]!.ms)}`));
    console.log(`  ${'total, as the app saw it'.padEnd(width)}  ${ms(cold.total)}  ${ms(warm.total)}`);
    console.log('  (the first call includes D-Bus activation of xdg-desktop-portal and the guest backend)');
    const content = warm.content;
    ok = content === 'Q3 revenue: 4.2M\n';
  } finally {
    const root = world.root;
    await world.stop();
    const left = processesMatching(root);
    console.log(left.length ? `\nSTILL RUNNING: ${left.map((p) => p.cmdline).join('; ')}` : '\nEverything stopped.');
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
