import { createInterface } from 'node:readline';
import { Bus } from '../src/dbus/bus.js';
import { fileDialogOn } from '../src/testbed/world.js';
import { timeEach } from './stats.js';

/**
 * The app of the sandboxed-local baseline (bench/sandbox.ts starts it inside
 * bubblewrap, with a /.flatpak-info in its root): it makes the same OpenFile
 * call as the bench's other apps, on the bus socket bound into the sandbox,
 * and times each from its own side. Driven by one JSON line per command on
 * stdin, answered by one JSON line on stdout:
 *
 *   {"run": k, "warmup": w}  →  {"samples": [ms, …], "uris": [the last answer's uris]}
 */
interface Command {
  run: number;
  warmup: number;
}

async function main(): Promise<void> {
  const address = process.env.DBUS_SESSION_BUS_ADDRESS;
  if (!address) throw new Error('no DBUS_SESSION_BUS_ADDRESS in the sandbox');
  const bus = await Bus.connect(address);
  let uris: string[] = [];
  const call = async () => {
    const r = await fileDialogOn(bus, 'OpenFile', 'Bench');
    if (r.response !== 0) throw new Error(`sandboxed OpenFile answered ${r.response}`);
    uris = (r.results.uris?.value as string[] | undefined) ?? [];
  };
  process.stdout.write(`${JSON.stringify({ ready: bus.uniqueName })}\n`);
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line) as Command;
    try {
      const samples = await timeEach(cmd.run, call, cmd.warmup);
      process.stdout.write(`${JSON.stringify({ samples, uris })}\n`);
    } catch (err) {
      process.stdout.write(`${JSON.stringify({ error: (err as Error).message })}\n`);
    }
  }
  bus.close();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`sandboxed app: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
