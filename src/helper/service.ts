import { closeSync } from 'node:fs';
import { Bus, PortalError, type MethodContext, type MethodImpl } from '../dbus/bus.js';
import { loadInterface } from '../dbus/interfaces.js';
import { requireProgram } from '../deps.js';
import { runProgram } from '../exec.js';
import { childLogger } from '../log.js';
import { socketFd } from '../native/fds.js';
import { COMMANDS, HELPER_BUS_NAME, HELPER_INTERFACE, HELPER_PATH, HelperError, parseCommand, printable, type CommandName } from './commands.js';
import type { Caller } from './decide.js';
import { execute, type HelperPaths } from './operations.js';

/**
 * The helper as a D-Bus system service: root, started by D-Bus activation,
 * one request at a time. The caller is whoever the bus daemon says sent the
 * message (GetConnectionUnixUser, from the socket's credentials), never a
 * word of the request. Each request makes exactly one log line: who, what,
 * allowed, refused or failed, and why.
 */
const log = childLogger({ module: 'helper' });

const ERROR_KINDS = { invalid: 'InvalidArgument', refused: 'NotAllowed', 'not-found': 'NotFound', failed: 'Failed' } as const;

export interface HelperServiceOptions {
  busAddress: string;
  paths: HelperPaths;
  /** Exit after this long with no request; 0 stays up. */
  idleSeconds: number;
}

export interface HelperService {
  /** Resolves when the service stops: idle, the bus gone, or stop(). */
  done: Promise<void>;
  stop(): void;
}

async function identify(bus: Bus, sender: string): Promise<Caller> {
  const [uid] = await bus.call({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'GetConnectionUnixUser', signature: 's', body: [sender] });
  if (typeof uid !== 'number') throw new Error(`the bus gave no uid for ${sender}`);
  // getent and id ask NSS, so LDAP and systemd-homed users resolve too; a uid with no entry has no name and no groups.
  const entry = await runProgram(requireProgram('getent'), ['passwd', String(uid)], { timeoutMs: 5000 }).catch(() => undefined);
  const user = entry?.stdout.split(':')[0] || undefined;
  const groups = user ? await runProgram(requireProgram('id'), ['-Gn', '--', user], { timeoutMs: 5000 }).then((r) => r.stdout.trim().split(/\s+/).filter(Boolean), () => []) : [];
  return { uid, user, groups };
}

export async function startHelperService(opts: HelperServiceOptions): Promise<HelperService> {
  const bus = await Bus.connect(opts.busAddress, { unixFds: true, dropReceivedFds: true });
  if (!bus.unixFds) {
    bus.close();
    throw new Error(`cannot pass descriptors on ${opts.busAddress}: the bus did not agree to unix fd passing, or the usocket module is missing`);
  }
  let stop!: () => void;
  const done = new Promise<void>((resolve) => (stop = resolve));
  let idle: NodeJS.Timeout | undefined;
  const touch = () => {
    clearTimeout(idle);
    if (opts.idleSeconds > 0) idle = setTimeout(stop, opts.idleSeconds * 1000);
  };
  bus.onDisconnect(stop);
  // One at a time: picking a free tap name and creating it must not interleave with another request.
  let queue: Promise<unknown> = Promise.resolve();
  const handle = (name: CommandName) => (args: unknown[], ctx: MethodContext) => {
    const run = queue.then(() => request(bus, opts.paths, name, args, ctx));
    queue = run.catch(() => undefined).finally(touch);
    return run;
  };
  const impl: Record<string, MethodImpl> = {};
  for (const [name, spec] of Object.entries(COMMANDS)) impl[spec.method] = handle(name as CommandName);
  bus.export(HELPER_PATH, loadInterface(HELPER_INTERFACE), impl);
  await bus.requestName(HELPER_BUS_NAME);
  touch();
  log.info({ bus: opts.busAddress, allowList: opts.paths.allowList, idleSeconds: opts.idleSeconds }, 'helper: serving');
  void done.then(() => {
    clearTimeout(idle);
    bus.close();
  });
  return { done, stop: () => stop() };
}

async function request(bus: Bus, paths: HelperPaths, name: CommandName, args: unknown[], ctx: MethodContext): Promise<unknown[]> {
  const arg = String(args[0]);
  const line: Record<string, unknown> = { command: name, arg: printable(arg, 64), sender: ctx.sender };
  try {
    const caller = await identify(bus, ctx.sender).catch((err: Error) => {
      throw new HelperError('refused', `cannot identify the caller ${ctx.sender}: ${err.message}`);
    });
    Object.assign(line, { uid: caller.uid, user: caller.user });
    const outcome = await execute(parseCommand([name, arg]), caller, paths);
    if (outcome.fd !== undefined) {
      const fd = outcome.fd;
      ctx.afterReply?.(() => closeSync(fd));
    }
    const stream = outcome.stream;
    if (stream) ctx.afterReply?.(() => stream.destroy());
    log.info({ ...line, decision: 'allowed', rule: outcome.rule, ...(outcome.tap ? { tap: outcome.tap } : {}), ...(outcome.address ? { address: outcome.address } : {}) }, `helper: ${name} ${line.arg}: allowed`);
    if (name === 'tap-create') return [outcome.tap];
    if (name === 'vm-only-up') return [outcome.address];
    if (name === 'usb-export') return [socketFd(stream!)];
    return name === 'usb-open' || name === 'tap-open' ? [outcome.fd] : [];
  } catch (err) {
    const e = err instanceof HelperError ? err : new HelperError('failed', (err as Error).message);
    log.warn({ ...line, decision: e.kind === 'failed' ? 'failed' : 'refused', reason: e.message }, `helper: ${name} ${line.arg}: ${e.kind === 'failed' ? 'failed' : 'refused'}`);
    throw new PortalError(ERROR_KINDS[e.kind], e.message);
  }
}
