import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Bus } from '../dbus/bus.js';
import { requireProgram } from '../deps.js';
import { startService, type Service } from '../exec.js';
import { asUser, type SessionUser } from './as-user.js';
import { isAlive } from '../proc.js';

/**
 * A private dbus-daemon for one side of a test (a "host" or a "guest"
 * session), with D-Bus activation of the real services we list. Activated
 * services inherit `env`, as they would from a user session.
 */
export interface ActivatableService {
  name: string;
  exec: string;
}

export interface PrivateBus {
  address: string;
  /** What the daemon and the services it activated wrote to stderr, line by line. */
  log: string[];
  /** The dbus-daemon's pid. */
  pid: number | undefined;
  dir: string;
  env: Record<string, string>;
  /** Every process owning a name on this bus, then the daemon itself. */
  stop(): Promise<void>;
}

/** `asUser`: the bus and what it activates run as that user, and this (root) process may still connect. */
export async function startPrivateBus(opts: { dir: string; env: Record<string, string>; services: ActivatableService[]; asUser?: SessionUser }): Promise<PrivateBus> {
  const servicesDir = path.join(opts.dir, 'services');
  mkdirSync(servicesDir, { recursive: true });
  for (const s of opts.services) writeFileSync(path.join(servicesDir, `${s.name}.service`), `[D-BUS Service]\nName=${s.name}\nExec=${s.exec}\n`);
  const socket = path.join(opts.dir, 'bus');
  const address = `unix:path=${socket}`;
  const config = path.join(opts.dir, 'bus.conf');
  writeFileSync(
    config,
    `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <keep_umask/>
  <listen>${address}</listen>
  <servicedir>${servicesDir}</servicedir>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>${opts.asUser ? '\n    <allow user="root"/>' : ''}
  </policy>
</busconfig>
`,
  );
  const env = { ...opts.env, DBUS_SESSION_BUS_ADDRESS: address };
  const log: string[] = [];
  const daemon = startService('dbus-daemon', ...asUser(opts.asUser, requireProgram('dbus-daemon'), ['--config-file', config, '--nofork', '--nopidfile']), {
    env,
    inheritEnv: false,
    onStderrLine: (line) => {
      log.push(line);
      if (log.length > 20_000) log.splice(0, 10_000);
    },
  });
  await waitForBus(address, daemon);
  return { address, dir: opts.dir, env, log, pid: daemon.pid, stop: () => stopBus(address, daemon) };
}

async function waitForBus(address: string, daemon: Service): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const bus = await Bus.connect(address);
      bus.close();
      return;
    } catch (err) {
      if (!daemon.running || Date.now() > deadline) throw new Error(`dbus-daemon did not come up: ${(err as Error).message}\n${daemon.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * Stop the bus and what it started. Its clients are asked of the bus itself;
 * a bus already dead (a test killed it) cannot say, and a connect to it can
 * hang where one of its children inherited the listening socket, so then, and
 * after 2 s in any case, they are found by the bus address in their
 * environment instead (D-Bus activation gives every service that).
 */
async function stopBus(address: string, daemon: Service): Promise<void> {
  const asked = await Promise.race([busPids(address).catch(() => undefined), new Promise<undefined>((r) => setTimeout(() => r(undefined), 2000).unref())]);
  const pids = asked ?? pidsWithBusAddress(address);
  for (const pid of pids) signal(pid, 'SIGTERM');
  const deadline = Date.now() + 3000;
  while (pids.some(isAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  for (const pid of pids.filter(isAlive)) signal(pid, 'SIGKILL');
  await daemon.stop();
}

/** Processes whose environment names this bus (those we may read), except ourselves. */
function pidsWithBusAddress(address: string): number[] {
  const needle = `\0DBUS_SESSION_BUS_ADDRESS=${address}\0`;
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      if (`\0${readFileSync(`/proc/${pid}/environ`, 'latin1')}`.includes(needle)) out.push(pid);
    } catch {
      /* gone, or not ours to read */
    }
  }
  return out;
}

/** The pids of every client of the bus except ourselves. */
async function busPids(address: string): Promise<number[]> {
  const bus = await Bus.connect(address);
  try {
    const dbus = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus' };
    const [names] = (await bus.call({ ...dbus, member: 'ListNames' })) as [string[]];
    const pids = new Set<number>();
    for (const name of names.filter((n) => n.startsWith(':'))) {
      const [pid] = await bus.call({ ...dbus, member: 'GetConnectionUnixProcessID', signature: 's', body: [name] }).catch(() => [undefined]);
      if (typeof pid === 'number' && pid !== process.pid) pids.add(pid);
    }
    return [...pids];
  } finally {
    bus.close();
  }
}


function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}
