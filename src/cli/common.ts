import { parseArgs, type ParseArgsConfig } from 'node:util';
import { Bus } from '../dbus/bus.js';
import { CONTROL_BUS_NAME, CONTROL_INTERFACE, CONTROL_PATH } from '../host/control.js';

/** Shared CLI plumbing: argument parsing with --help, errors, tables, and the daemon's control interface. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface Verb {
  name: string;
  usage: string;
  run(argv: string[]): Promise<number>;
}

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: T, usage: string) {
  try {
    return parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${usage}`);
  }
}

export function table(rows: string[][], header: string[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

export function sessionBusAddress(): string {
  const address = process.env.DBUS_SESSION_BUS_ADDRESS ?? (process.env.XDG_RUNTIME_DIR ? `unix:path=${process.env.XDG_RUNTIME_DIR}/bus` : undefined);
  if (!address) throw new Error('no D-Bus session bus: DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are both unset');
  return address;
}

/** The running daemon's control interface, or undefined when no daemon runs on this session bus. */
export async function daemonControl(bus: Bus) {
  if (!(await bus.nameOwner(CONTROL_BUS_NAME))) return undefined;
  const call = (member: string, signature = '', body: unknown[] = []) =>
    bus.call({ destination: CONTROL_BUS_NAME, path: CONTROL_PATH, interface: CONTROL_INTERFACE, member, signature, body });
  return { call };
}


export function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
  });
}

/**
 * A verb that is the host's or a VM's depending on where it runs: the host
 * when the host daemon's bus name is on this session bus, else a VM, whose
 * guest backend answers. `--json` for both.
 */
export function hostOrGuestVerb(
  name: string,
  usage: string,
  sides: {
    onHost: (control: NonNullable<Awaited<ReturnType<typeof daemonControl>>>, action: string | undefined, rest: string[], json: boolean) => Promise<number>;
    inGuest: (bus: Bus, action: string | undefined, rest: string[], json: boolean) => Promise<number>;
  },
): Verb {
  return {
    name,
    usage,
    async run(argv) {
      const { values, positionals } = parse(argv, { json: { type: 'boolean' } }, usage);
      if (values.help) return console.log(usage), 0;
      const [action, ...rest] = positionals;
      const bus = await Bus.connect(sessionBusAddress());
      try {
        const control = await daemonControl(bus);
        return control ? await sides.onHost(control, action, rest, !!values.json) : await sides.inGuest(bus, action, rest, !!values.json);
      } finally {
        bus.close();
      }
    },
  };
}
