import { accessSync, constants, createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Exit, Service } from '../../exec.js';
import { childLogger } from '../../log.js';
import { packageRoot } from '../../paths.js';
import type { QmpClient } from '../../vmm/qmp.js';
import { GuestAgent } from './agent.js';
import { defaultCacheDir, prepareGuestImage } from './guest-image.js';
import { baseMachineArgs, launchQemu } from './qemu-launch.js';
import { removeOnExit } from './reaper.js';
import { processesMatching } from '../processes.js';
import { startRootShare } from './virtiofsd.js';

/**
 * Boot a throw-away QEMU guest for an end-to-end test: the Debian kernel by PVH,
 * our busybox initramfs, and (by default) the host's `/` as a read-only root, so
 * the guest runs this checkout with the host's node. Everything it starts is
 * torn down by shutdown() or cleanup(), or at the latest when the process exits.
 */

export interface AccelChoice {
  accel: 'tcg' | 'kvm';
  why: string;
}

/** KVM where it can boot a stock kernel; TCG on PVM hosts, where KVM cannot. */
export function chooseAccel(
  env: Record<string, string | undefined> = process.env,
  exists: (p: string) => boolean = existsSync,
  usable: (p: string) => boolean = (p) => canReadWrite(p),
): AccelChoice {
  const forced = env.XDP_VM_E2E_ACCEL;
  if (forced === 'tcg' || forced === 'kvm') return { accel: forced, why: 'forced by XDP_VM_E2E_ACCEL' };
  if (exists('/sys/module/kvm_pvm')) {
    return { accel: 'tcg', why: 'host KVM is kvm_pvm, which cannot run a stock guest kernel at usable speed' };
  }
  if (!exists('/dev/kvm')) return { accel: 'tcg', why: '/dev/kvm is absent' };
  if (!usable('/dev/kvm')) return { accel: 'tcg', why: '/dev/kvm is not readable and writable by this user' };
  return { accel: 'kvm', why: '/dev/kvm is usable' };
}

function canReadWrite(p: string): boolean {
  try {
    accessSync(p, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export interface SerialPortSpec {
  /** The name the guest sees under /dev/virtio-ports/. */
  name: string;
  /** QEMU listens here (server=on,wait=off); the test connects as the host end. */
  socketPath: string;
}

export interface BootGuestOptions {
  name: string;
  extraQemuArgs?: readonly string[];
  /** Appended to the kernel command line (later values win). */
  kernelArgs?: readonly string[];
  /** Free pcie-root-ports (ids rp1…rpN) for hot-plug; default 2. */
  rootPorts?: number;
  serialPorts?: readonly SerialPortSpec[];
  memMiB?: number;
  /** From QEMU start to agent ready; default 90 s (TCG on a busy 2-core box). */
  timeoutMs?: number;
  /** Host `/` as the guest root (default); false runs the agent from the initramfs. */
  hostRoot?: boolean;
  /** Module groups to load (see MODULE_GROUPS); default all. */
  modules?: readonly string[];
  /**
   * QEMU's umask, for the sockets it makes once running (a channel's
   * chardev): a QEMU run as root here serves a daemon run as the test user,
   * who must be able to connect. Default: this process's.
   */
  umask?: string;
}

export interface BootTimings {
  /** Preparing (or finding) the kernel and initramfs. */
  imageMs: number;
  /** Starting the root share's virtiofsd. */
  rootShareMs: number;
  /** The rest are measured from QEMU's spawn. */
  qmpMs: number;
  initMs: number | undefined;
  modulesMs: number | undefined;
  agentReadyMs: number;
  /** The guest's own uptime when its agent first reported. */
  guestUptimeS: number | undefined;
}

export interface ShutdownReport {
  ms: number;
  /** False when QEMU had to be killed. */
  graceful: boolean;
  qemuExit: Exit;
}

export class GuestConsole {
  readonly lines: string[] = [];
  private waiters = new Set<(line: string) => void>();
  private file: WriteStream;

  constructor(readonly path: string) {
    this.file = createWriteStream(path);
  }

  push(line: string): void {
    const clean = line.replace(/\r$/, '');
    this.lines.push(clean);
    this.file.write(`${clean}\n`);
    for (const waiter of [...this.waiters]) waiter(clean);
  }

  /** The first line (past or future) matching `pattern`. */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<string> {
    const seen = this.lines.find((l) => pattern.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(`console: no line matching ${pattern} within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (line: string) => {
        if (!pattern.test(line)) return;
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve(line);
      };
      this.waiters.add(waiter);
    });
  }

  tail(n = 30): string {
    return this.lines.slice(-n).join('\n');
  }

  close(): void {
    this.file.end();
  }
}

export interface Guest {
  name: string;
  accel: AccelChoice;
  workDir: string;
  qmp: QmpClient;
  agent: GuestAgent;
  console: GuestConsole;
  timings: BootTimings;
  /** Ids of the free root ports the guest was started with. */
  rootPorts: string[];
  pids: { qemu: number | undefined; rootVirtiofsd: number | undefined };
  /** poweroff -f in the guest, wait for QEMU to exit, kill it if it does not; then cleanup(). */
  shutdown(opts?: { timeoutMs?: number }): Promise<ShutdownReport>;
  /** Kill whatever is left and remove the work directory; safe to call twice. */
  cleanup(): Promise<void>;
}

export const KERNEL_CMDLINE = [
  'console=ttyS0', 'panic=-1', 'quiet', 'mitigations=off', 'nokaslr', 'tsc=reliable', 'no_timer_check',
  '8250.nr_uarts=1', 'i8042.noaux', 'i8042.nokbd', 'i8042.nopnp', 'cryptomgr.notests', 'rodata=off',
];
const AGENT_PORT = 'org.xdpvm.agent';
const WORKDIR_PREFIX = 'xdpvm-e2e-';
/** Younger dirs may belong to a boot that has not started QEMU yet. */
const STALE_AFTER_MS = 60_000;
const ROOT_TAG = 'hostroot';

/** What one guest holds on the host, released in reverse order by release(). */
class GuestResources {
  readonly services: Service[] = [];
  agent: GuestAgent | undefined;
  qmp: QmpClient | undefined;
  private released = false;
  private readonly forgetDir: () => void;

  constructor(
    readonly workDir: string,
    readonly console: GuestConsole,
  ) {
    this.forgetDir = removeOnExit(workDir);
  }

  file(name: string): string {
    return path.join(this.workDir, name);
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.agent?.close();
    await this.qmp?.disconnect().catch(() => undefined);
    for (const service of [...this.services].reverse()) await service.stop(1000);
    this.console.close();
    rmSync(this.workDir, { recursive: true, force: true });
    this.forgetDir();
  }
}

export async function bootGuest(opts: BootGuestOptions): Promise<Guest> {
  const accel = chooseAccel();
  const t0 = Date.now();
  const image = await prepareGuestImage();
  const imageMs = Date.now() - t0;
  sweepStaleWorkDirs();
  const logDir = path.resolve(defaultCacheDir(), '..', 'e2e-logs');
  mkdirSync(logDir, { recursive: true });
  const res = new GuestResources(
    mkdtempSync(path.join(tmpdir(), `${WORKDIR_PREFIX}${opts.name}-`)),
    new GuestConsole(path.join(logDir, `${opts.name}.console.log`)),
  );
  try {
    const hostRoot = opts.hostRoot ?? true;
    const tRoot = Date.now();
    if (hostRoot) {
      mkdirSync(res.file('hostroot'));
      res.services.push(await startRootShare({ socketPath: res.file('root.sock'), mountPoint: res.file('hostroot'), alsoShow: checkoutPath() }));
    }
    const rootShareMs = Date.now() - tRoot;
    const rootPorts = Array.from({ length: opts.rootPorts ?? 2 }, (_, i) => `rp${i + 1}`);
    const args = guestQemuArgs(opts, {
      accel: accel.accel,
      vmlinux: image.vmlinux,
      initramfs: image.initramfs,
      hostRoot,
      res,
      modules: Object.keys(image.moduleGroups),
    });
    const tSpawn = Date.now();
    const marks = new Map<string, number>();
    const qemu = await launchQemu({
      name: opts.name,
      args,
      qmpSocket: res.file('qmp.sock'),
      ...(opts.umask !== undefined ? { umask: opts.umask } : {}),
      onStdoutLine: (line) => {
        const mark = /^XDPVM-([A-Z-]+)/.exec(line)?.[1];
        if (mark && !marks.has(mark)) marks.set(mark, Date.now() - tSpawn);
        res.console.push(line);
      },
    });
    res.services.push(qemu.service);
    res.qmp = qemu.qmp;
    const qmpMs = Date.now() - tSpawn;
    res.agent = await waitForAgent(qemu.service, res.file('agent.sock'), opts);
    const timings: BootTimings = {
      imageMs,
      rootShareMs,
      qmpMs,
      initMs: marks.get('INIT'),
      modulesMs: marks.get('MODULES'),
      agentReadyMs: Date.now() - tSpawn,
      guestUptimeS: res.agent.readyUptime,
    };
    return assembleGuest(opts.name, accel, res, qemu.qmp, res.agent, timings, rootPorts, hostRoot);
  } catch (err) {
    const tail = res.console.tail();
    await res.release();
    throw new Error(`booting guest ${opts.name} failed: ${(err as Error).message}\n--- console tail ---\n${tail}`, { cause: err });
  }
}

/** The checkout the guest runs, at the same path as on the host (wherever it was cloned). */
export function checkoutPath(): string {
  const root = packageRoot();
  if (/\s/.test(root)) throw new Error(`the e2e guests cannot use a checkout whose path has whitespace: ${root}`);
  return root;
}

function guestQemuArgs(
  opts: BootGuestOptions,
  g: { accel: 'tcg' | 'kvm'; vmlinux: string; initramfs: string; hostRoot: boolean; res: GuestResources; modules: string[] },
): string[] {
  const cmdline = [...KERNEL_CMDLINE, `xdpvm.modules=${(opts.modules ?? g.modules).join(',')}`];
  if (g.hostRoot) cmdline.push(`xdpvm.root=${ROOT_TAG}`, `xdpvm.checkout=${checkoutPath()}`);
  cmdline.push(...(opts.kernelArgs ?? []));
  return [
    ...baseMachineArgs({ accel: g.accel, memMiB: opts.memMiB ?? 512, rootPorts: opts.rootPorts ?? 2 }),
    '-cpu', g.accel === 'kvm' ? 'host' : 'max', '-smp', '1',
    '-kernel', g.vmlinux, '-initrd', g.initramfs, '-append', cmdline.join(' '),
    '-no-reboot', '-serial', 'stdio',
    ...serialArgs([{ name: AGENT_PORT, socketPath: g.res.file('agent.sock') }, ...(opts.serialPorts ?? [])]),
    ...(g.hostRoot ? rootShareArgs(g.res.file('root.sock')) : []),
    ...(opts.extraQemuArgs ?? []),
  ];
}

/** The agent's READY, or QEMU's own reason if the guest died on the way. */
async function waitForAgent(qemu: Service, socketPath: string, opts: BootGuestOptions): Promise<GuestAgent> {
  const qemuGone = new AbortController();
  void qemu.exited.then(() => qemuGone.abort());
  try {
    return await GuestAgent.connect(socketPath, { timeoutMs: opts.timeoutMs ?? 90_000, name: opts.name, signal: qemuGone.signal });
  } catch (err) {
    // The agent link dies with QEMU; QEMU's exit status and stderr say why.
    const exit = await Promise.race([qemu.exited, sleep(1000).then(() => undefined)]);
    if (!exit) throw err;
    throw new Error(`QEMU exited during boot (${JSON.stringify(exit)}): ${qemu.stderr.trim().slice(-1000)}`, { cause: err });
  }
}

function assembleGuest(
  name: string,
  accel: AccelChoice,
  res: GuestResources,
  qmp: QmpClient,
  agent: GuestAgent,
  timings: BootTimings,
  rootPorts: string[],
  hostRoot: boolean,
): Guest {
  const log = childLogger({ component: 'e2e-vm', vm: name });
  log.info({ accel: accel.accel, why: accel.why, ...timings }, `guest ${name} booted: agent ready ${timings.agentReadyMs} ms after QEMU start`);
  const rootService = hostRoot ? res.services[0] : undefined;
  const qemuService = res.services[res.services.length - 1] as Service;
  return {
    name,
    accel,
    workDir: res.workDir,
    qmp,
    agent,
    console: res.console,
    timings,
    rootPorts,
    pids: { qemu: qemuService.pid, rootVirtiofsd: rootService?.pid },
    shutdown: async (sopts = {}) => {
      const report = await shutdownGuest(qemuService, agent, sopts.timeoutMs ?? 15_000);
      // The root virtiofsd exits once QEMU has hung up; give it a moment to do so.
      if (rootService) await Promise.race([rootService.exited, sleep(2000)]);
      await res.release();
      log.info({ ...report }, `guest ${name} shut down in ${report.ms} ms`);
      return report;
    },
    cleanup: () => res.release(),
  };
}

/**
 * Work dirs of test processes that died without cleaning up (vitest ends workers
 * without exit handlers). Their QEMU and virtiofsd died with them (parent-death
 * signal), so a dir that no live process names is only sockets and logs. The
 * root share's mount never appears here: it lived in virtiofsd's own namespace.
 */
function sweepStaleWorkDirs(): void {
  const candidates = readdirSync(tmpdir())
    .filter((name) => name.startsWith(WORKDIR_PREFIX))
    .map((name) => path.join(tmpdir(), name))
    .filter((dir) => {
      try {
        return Date.now() - statSync(dir).mtimeMs > STALE_AFTER_MS;
      } catch {
        return false;
      }
    });
  for (const dir of candidates) {
    if (processesMatching(dir).length === 0) rmSync(dir, { recursive: true, force: true });
  }
}

async function shutdownGuest(qemu: Service, agent: GuestAgent, timeoutMs: number): Promise<ShutdownReport> {
  const started = Date.now();
  // The host's own poweroff is systemctl; busybox's talks to the kernel directly.
  agent.send('busybox poweroff -f || echo o > /proc/sysrq-trigger');
  const exited = await Promise.race([qemu.exited, sleep(timeoutMs).then(() => undefined)]);
  if (exited) return { ms: Date.now() - started, graceful: true, qemuExit: exited };
  const forced = await qemu.stop(3000);
  return { ms: Date.now() - started, graceful: false, qemuExit: forced };
}

/** QEMU option values escape a comma by doubling it. */
function opt(value: string): string {
  return value.replaceAll(',', ',,');
}

function serialArgs(ports: readonly SerialPortSpec[]): string[] {
  const args = ['-device', 'virtio-serial-pci,id=vser0'];
  ports.forEach((port, i) => {
    args.push('-chardev', `socket,id=vser${i},path=${opt(port.socketPath)},server=on,wait=off`);
    args.push('-device', `virtserialport,bus=vser0.0,chardev=vser${i},name=${opt(port.name)}`);
  });
  return args;
}

function rootShareArgs(socketPath: string): string[] {
  return [
    '-chardev', `socket,id=rootfs,path=${opt(socketPath)}`,
    '-device', `vhost-user-fs-pci,id=rootfs,chardev=rootfs,tag=${ROOT_TAG},queue-size=1024`,
  ];
}
