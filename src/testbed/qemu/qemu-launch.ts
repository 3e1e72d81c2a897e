import { setTimeout as sleep } from 'node:timers/promises';
import { requireProgram } from '../../deps.js';
import { startService, type Exit, type Service } from '../../exec.js';
import { QmpClient, QmpError } from '../../vmm/qmp.js';
import { diesWithParent, reapOnExit } from './reaper.js';
import { waitForSocket } from './virtiofsd.js';

export interface LaunchOptions {
  name: string;
  /** Everything after the program name except `-qmp`, which this adds. */
  args: readonly string[];
  qmpSocket: string;
  timeoutMs?: number;
  onStdoutLine?: (line: string) => void;
  /** Start QEMU with this umask (octal digits). */
  umask?: string;
}

export interface LaunchedQemu {
  service: Service;
  qmp: QmpClient;
  /** SIGTERM, then SIGKILL; resolves when QEMU is gone. */
  stop(graceMs?: number): Promise<Exit>;
}

/** Start QEMU with a QMP socket and return it connected and negotiated. */
export async function launchQemu(opts: LaunchOptions): Promise<LaunchedQemu> {
  const qemu = requireProgram('qemu-system-x86_64');
  const args = [...opts.args, '-qmp', `unix:${opts.qmpSocket},server=on,wait=off`];
  if (opts.umask !== undefined && !/^[0-7]{3,4}$/.test(opts.umask)) throw new Error(`umask ${opts.umask} is not octal digits`);
  const [file, argv] = diesWithParent(qemu, args);
  const command: [string, string[]] = opts.umask === undefined ? [file, argv] : ['/bin/sh', ['-c', `umask ${opts.umask} && exec "$0" "$@"`, file, ...argv]];
  const service = reapOnExit(startService(`qemu-${opts.name}`, ...command, opts.onStdoutLine ? { onStdoutLine: opts.onStdoutLine } : {}));
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const qmp = new QmpClient({ name: opts.name });
  try {
    await waitForSocket(opts.qmpSocket, service, timeoutMs);
    await connectWhenListening(qmp, opts.qmpSocket, service, timeoutMs);
  } catch (err) {
    // QEMU that rejects its arguments exits at once; its stderr is the real reason.
    const exit = await Promise.race([service.exited, sleep(500).then(() => undefined)]);
    await service.stop(500);
    if (!exit) throw err;
    throw new Error(`QEMU exited at start (${JSON.stringify(exit)}): ${service.stderr.trim().slice(-1000)}`, { cause: err });
  }
  return {
    service,
    qmp,
    stop: async (graceMs = 3000) => {
      await qmp.disconnect();
      return service.stop(graceMs);
    },
  };
}

/** QEMU binds the socket a moment before it listens on it: retry a refused connect. */
async function connectWhenListening(qmp: QmpClient, socketPath: string, service: Service, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await qmp.connect(socketPath, { timeoutMs });
      return;
    } catch (err) {
      const refused = err instanceof QmpError && err.phase === 'connect' && /ECONNREFUSED/.test(err.message);
      if (!refused || !service.running || Date.now() > deadline) throw err;
      await sleep(10);
    }
  }
}

/** A q35 machine with shared memory (vhost-user needs it) and `rootPorts` hot-plug slots. */
export function baseMachineArgs(opts: { accel: 'tcg' | 'kvm'; memMiB: number; rootPorts: number }): string[] {
  const args = [
    '-machine', 'q35', '-accel', opts.accel, '-m', `${opts.memMiB}M`,
    '-object', `memory-backend-memfd,id=mem,size=${opts.memMiB}M,share=on`, '-numa', 'node,memdev=mem',
    '-nodefaults', '-no-user-config', '-display', 'none',
  ];
  for (let i = 1; i <= opts.rootPorts; i++) {
    args.push('-device', `pcie-root-port,id=rp${i},bus=pcie.0,chassis=${i},slot=${i}`);
  }
  return args;
}
