import { EventEmitter } from 'node:events';
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readlinkSync, readSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { userInfo } from 'node:os';
import { requireProgram } from '../deps.js';
import { runProgram, startService, type Exit, type Service } from '../exec.js';
import type { Logger } from '../log.js';
import { listProcesses, type ProcessInfo } from '../proc.js';
import { mapArgs, namespaceMaps, readSubIds, type NamespaceMaps, type UserIds } from './userns.js';

/**
 * One virtiofsd per VM share, watched.
 *
 * virtiofsd serves one VMM connection and exits 0 when the VMM lets go (the
 * VM shut down, or the share was unplugged). Any other exit is a crash: a
 * guest with the share mounted then hangs on it for good (QEMU 7.2 cannot
 * reconnect), so the share is marked failed, loudly, and not restarted
 * behind the user's back.
 *
 * virtiofsd outlives the daemon: stopping or restarting the daemon must not
 * pull a mounted share from under a guest. A new daemon adopts the virtiofsd
 * still serving the socket.
 *
 * The daemon normally runs as an ordinary user (its systemd user unit). The C
 * virtiofsd of Debian 12 cannot run as one: it drops supplementary groups
 * (setgroups), sets up its own mount, pid and network namespaces, and writes
 * a pid file under /var/run/virtiofsd. So a daemon that is not root starts it
 * in a user namespace of its own (see unprivilegedCommand and userns.ts):
 * the user's own uid and gid kept, the user's subordinate ids for the rest,
 * the namespace's capabilities kept as ambient ones, and a folder of the
 * user's bind-mounted over /var so the pid file has somewhere to go. Nothing
 * else moves: the socket and the source are at the paths the VMM and the
 * document store know, and the process, once started, is virtiofsd itself
 * with its usual command line, found and adopted as before.
 */
export type ShareState = 'stopped' | 'starting' | 'ready' | 'attached' | 'failed';

export interface VirtiofsdOptions {
  vm: string;
  binary: string;
  source: string;
  socket: string;
  cache: 'none' | 'auto' | 'always';
  logFile: string;
  /** Serve the source read-only: bind-mounted read-only in virtiofsd's own mount namespace, so every guest write fails with EROFS. */
  readOnly?: boolean;
  log: Logger;
  /** For an adopted process whose exit status we cannot see: was its share still plugged in? */
  stillAttached?: () => Promise<boolean>;
}

const SOCKET_WAIT_MS = 5000;
/** How long the namespace's shell waits for its id maps before it gives up (in 10 ms steps). */
const MAP_WAIT_STEPS = 500;
const FAST_EXIT_MS = 200;
const MAX_FAST_EXITS = 3;
const ADOPTED_POLL_MS = 500;

/** The virtiofsd process serving `socket`, found by its command line. */
export function findVirtiofsd(socket: string): number | undefined {
  return virtiofsdProcesses().find((p) => p.argv.includes(`--socket-path=${socket}`))?.pid;
}

/** Every running virtiofsd, ours or left by an earlier daemon, with its command line. */
export function virtiofsdProcesses(): ProcessInfo[] {
  return listProcesses().filter((p) => path.basename(p.argv[0] ?? '').includes('virtiofsd'));
}

/** The last lines virtiofsd wrote since `from` (its log is shared by every run). */
function tail(file: string, from: number, bytes = 2048): string {
  try {
    const size = statSync(file).size;
    const start = Math.max(from, size - bytes);
    if (size <= start) return '';
    const fd = openSync(file, 'r');
    const buf = Buffer.alloc(size - start);
    readSync(fd, buf, 0, buf.length, start);
    closeSync(fd);
    return buf.toString('utf8').trim().split('\n').slice(-2).join(' | ');
  } catch {
    return '';
  }
}

/**
 * The shell that runs inside the new user and mount namespaces, as the user
 * with the namespace's capabilities (unshare --keep-caps), before virtiofsd.
 * Its values come as positional parameters, never spliced in:
 *   $1 the folder mounted over /var   $2 setpriv   $3 mount
 *   $4 the source to make read-only, or empty   $5… virtiofsd and its arguments
 * 1. Wait for the daemon to write the id maps (newuidmap and newgidmap run
 *    outside the namespace, on this process); gid_map is written last.
 * 2. Mount the folder over /var, so /var/run/virtiofsd is the user's. mount(8)
 *    refuses to mount for a non-root uid, so that one command runs as the
 *    namespace's root (one of the user's subordinate uids).
 * 3. For a read-only share, bind the source over itself read-only. The C
 *    virtiofsd has no read-only option; it bind-mounts the source again for
 *    its own sandbox, and a bind mount keeps the read-only flag, so the guest
 *    gets EROFS whatever it does, its root included.
 * 4. exec virtiofsd through setpriv with SECBIT_NO_SETUID_FIXUP, which
 *    survives exec. virtiofsd switches its effective uid to the guest's for
 *    every create; without the bit, switching back from the namespace's uid 0
 *    (a create by the guest's root) to the user's uid would strip that
 *    worker thread of its capabilities for good, and its next write from an
 *    ordinary guest user fail with EPERM ("drop:capng_apply() failed").
 * unshare without --fork execs in place, so the pid the daemon started is
 * this shell's, then virtiofsd's.
 */
export const UNPRIVILEGED_SCRIPT = [
  'i=0',
  'until read -r line < /proc/self/gid_map 2>/dev/null && [ -n "$line" ]; do',
  `  i=$((i + 1)); [ "$i" -le ${MAP_WAIT_STEPS} ] || { echo 'xdp-vm: no uid and gid maps were written for this user namespace within 5 s' >&2; exit 125; }`,
  '  sleep 0.01',
  'done',
  'mkdir -p "$1/run" || exit 126',
  '"$2" --reuid=0 --regid=0 --clear-groups -- "$3" -n --bind "$1" /var || { echo "xdp-vm: could not mount $1 over /var in virtiofsd\'s mount namespace" >&2; exit 126; }',
  'if [ -n "$4" ]; then "$2" --reuid=0 --regid=0 --clear-groups -- "$3" -n -o bind,ro "$4" "$4" || { echo "xdp-vm: could not make $4 read-only in virtiofsd\'s mount namespace" >&2; exit 126; }; fi',
  'setpriv=$2',
  'shift 4',
  'exec "$setpriv" --securebits=+no_setuid_fixup -- "$@"',
].join('\n');

/** A tag in the shell's argv, so `ps` says what the waiting shell is. */
const SCRIPT_NAME = 'xdp-vm-virtiofsd-userns';

export interface UnprivilegedPrograms {
  unshare: string;
  setpriv: string;
  mount: string;
}

/**
 * unshare's command line for virtiofsd in a user namespace; the maps are
 * written afterwards, on the started pid (writeIdMaps).
 * `varDir` is the user's folder that stands in for /var inside the namespace.
 */
export function unprivilegedCommand(programs: UnprivilegedPrograms, varDir: string, binary: string, args: readonly string[], readOnlySource = ''): [string, string[]] {
  return [programs.unshare, ['--user', '--mount', '--propagation', 'private', '--keep-caps', '--', '/bin/sh', '-c', UNPRIVILEGED_SCRIPT, SCRIPT_NAME, varDir, programs.setpriv, programs.mount, readOnlySource, binary, ...args]];
}

/**
 * A root daemon's read-only share (tests and old setups: the daemon normally
 * runs as the user): virtiofsd in a mount namespace of its own where the
 * source is bound over itself read-only. $1 mount, $2 the source, $3… virtiofsd.
 */
export const READ_ONLY_SCRIPT = '"$1" -n -o bind,ro "$2" "$2" || { echo "xdp-vm: could not make $2 read-only in virtiofsd\'s mount namespace" >&2; exit 126; }\nshift 2\nexec "$@"';

export function readOnlyRootCommand(programs: Pick<UnprivilegedPrograms, 'unshare' | 'mount'>, source: string, binary: string, args: readonly string[]): [string, string[]] {
  return [programs.unshare, ['--mount', '--propagation', 'private', '--', '/bin/sh', '-c', READ_ONLY_SCRIPT, 'xdp-vm-virtiofsd-ro', programs.mount, source, binary, ...args]];
}

/**
 * Wait until `pid` is in a user namespace of its own. unshare(1) is started
 * and the maps written at once; on a loaded machine it may not have called
 * unshare(2) yet, and a map written then would go to our own namespace,
 * which the kernel refuses (EPERM).
 */
export async function untilOwnUserNamespace(pid: number, timeoutMs = 5000): Promise<void> {
  const ours = readlinkSync('/proc/self/ns/user');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let theirs: string;
    try {
      theirs = readlinkSync(`/proc/${pid}/ns/user`);
    } catch (err) {
      throw new Error(`the namespace's process ${pid} is gone (${(err as NodeJS.ErrnoException).code})`, { cause: err });
    }
    if (theirs !== ours) return;
    if (Date.now() > deadline) throw new Error(`process ${pid} did not enter a user namespace of its own within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Write `maps` into the user namespace of `pid` with the setuid helpers from Debian's uidmap. */
export async function writeIdMaps(pid: number, maps: NamespaceMaps): Promise<void> {
  await untilOwnUserNamespace(pid);
  await runProgram(requireProgram('newuidmap'), [String(pid), ...mapArgs(maps.uid)], { timeoutMs: 5000 });
  await runProgram(requireProgram('newgidmap'), [String(pid), ...mapArgs(maps.gid)], { timeoutMs: 5000 });
}

/** This process's user, for its subordinate ids. */
function currentUser(): UserIds {
  return { name: userInfo().username, uid: process.getuid!(), gid: process.getgid!() };
}

/** Paths virtiofsd must see where they are; inside its namespace /var is the user's folder. */
function underVar(p: string): boolean {
  return p === '/var' || p.startsWith('/var/');
}

export class VirtiofsdSupervisor extends EventEmitter {
  private service: Service | undefined;
  private adopted: number | undefined;
  private poll: NodeJS.Timeout | undefined;
  private stopping = false;
  private fastExits = 0;
  private logFrom = 0;
  state: ShareState = 'stopped';
  detail = '';

  constructor(readonly opts: VirtiofsdOptions) {
    super();
  }

  get pid(): number | undefined {
    return this.service?.running ? this.service.pid : this.adopted;
  }

  get running(): boolean {
    return this.pid !== undefined;
  }

  args(): string[] {
    return [`--socket-path=${this.opts.socket}`, '-o', `source=${this.opts.source}`, '-o', `cache=${this.opts.cache}`, '-o', 'log_level=warn'];
  }

  /** Make sure a virtiofsd serves the socket: adopt a live one, or start one. */
  async start(): Promise<void> {
    if (this.running) return;
    this.stopping = false;
    mkdirSync(path.dirname(this.opts.socket), { recursive: true, mode: 0o700 });
    // Never probe the socket by connecting: virtiofsd takes the first client
    // as its VMM and exits when it hangs up. Look for the process instead.
    const pid = findVirtiofsd(this.opts.socket);
    if (pid) return this.adopt(pid);
    this.set('starting', '');
    if (existsSync(this.opts.socket) && !lstatSync(this.opts.socket).isSocket()) throw new Error(`${this.opts.socket} exists and is not a socket; refusing to replace it`);
    rmSync(this.opts.socket, { force: true });
    mkdirSync(path.dirname(this.opts.logFile), { recursive: true, mode: 0o700 });
    this.logFrom = existsSync(this.opts.logFile) ? statSync(this.opts.logFile).size : 0;
    const started = Date.now();
    const unprivileged = this.unprivileged ? this.prepareUnprivileged() : undefined;
    const [file, args] = unprivileged
      ? unprivileged.command
      : this.opts.readOnly
        ? readOnlyRootCommand({ unshare: requireProgram('unshare'), mount: requireProgram('mount') }, this.opts.source, this.opts.binary, this.args())
        : [this.opts.binary, this.args()];
    const service = startService(`virtiofsd[${this.opts.vm}]`, file, args, { outliveParent: { logFile: this.opts.logFile } });
    this.service = service;
    void service.exited.then((exit) => this.onExit(exit, Date.now() - started, service));
    if (unprivileged) {
      try {
        await writeIdMaps(service.pid!, unprivileged.maps);
      } catch (err) {
        await service.stop();
        throw new Error(`could not map ids into virtiofsd's user namespace: ${(err as Error).message}`, { cause: err });
      }
    }
    await this.waitForSocket(service);
  }

  /** Not root: virtiofsd goes into a user namespace (see the top of this file). */
  get unprivileged(): boolean {
    return (process.getuid?.() ?? 0) !== 0;
  }

  /** The folder mounted over /var in virtiofsd's namespace; its pid file lands in run/virtiofsd/ there. */
  get varDir(): string {
    return path.join(path.dirname(this.opts.socket), 'virtiofsd-var');
  }

  /** Everything that can fail before anything starts, so a missing piece fails closed and says what to do. */
  private prepareUnprivileged(): { command: [string, string[]]; maps: NamespaceMaps } {
    const programs = { unshare: requireProgram('unshare'), setpriv: requireProgram('setpriv'), mount: requireProgram('mount') };
    requireProgram('newuidmap');
    requireProgram('newgidmap');
    for (const [what, p] of [['socket', this.opts.socket], ['source', this.opts.source]] as const) {
      if (underVar(path.resolve(p))) throw new Error(`the share's ${what} ${p} is under /var, which an unprivileged virtiofsd's namespace replaces with ${this.varDir}; put it elsewhere (the default is under $XDG_RUNTIME_DIR)`);
    }
    const { subuid, subgid } = readSubIds();
    const maps = namespaceMaps(currentUser(), subuid, subgid);
    mkdirSync(path.join(this.varDir, 'run'), { recursive: true, mode: 0o700 });
    return { command: unprivilegedCommand(programs, this.varDir, this.opts.binary, this.args(), this.opts.readOnly ? this.opts.source : ''), maps };
  }

  /** Stop it: only when its VM is gone or unplugged, never under a mounted share. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.poll);
    if (this.service?.running) await this.service.stop();
    else if (this.adopted) {
      try {
        process.kill(this.adopted, 'SIGTERM');
      } catch {
        /* already gone */
      }
    }
    this.adopted = undefined;
    this.set('stopped', '');
  }

  /** Forget the process without stopping it: the daemon is exiting and the guest keeps its share. */
  release(): void {
    this.stopping = true;
    clearInterval(this.poll);
  }

  markAttached(attached: boolean): void {
    if (this.state === 'failed') return;
    if (this.running) this.set(attached ? 'attached' : 'ready', '');
  }

  private adopt(pid: number): void {
    this.adopted = pid;
    this.set('ready', `adopted virtiofsd ${pid} left by a previous daemon`);
    this.opts.log.info({ pid }, 'adopted the virtiofsd still serving this VM\'s share');
    this.poll = setInterval(() => {
      if (existsSync(`/proc/${pid}`)) return;
      clearInterval(this.poll);
      this.adopted = undefined;
      void (this.opts.stillAttached?.() ?? Promise.resolve(false)).then((attached) =>
        this.onExit(attached ? { code: null, signal: null } : { code: 0, signal: null }, FAST_EXIT_MS * 10),
      );
    }, ADOPTED_POLL_MS);
  }

  private async waitForSocket(service: Service): Promise<void> {
    const deadline = Date.now() + SOCKET_WAIT_MS;
    while (Date.now() < deadline) {
      if (!service.running) throw new Error(`virtiofsd for ${this.opts.vm} exited at start: ${tail(this.opts.logFile, this.logFrom)}`);
      if (existsSync(this.opts.socket)) {
        if (this.state === 'starting') this.set('ready', '');
        return;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    await service.stop();
    throw new Error(`virtiofsd for ${this.opts.vm} did not create ${this.opts.socket} within ${SOCKET_WAIT_MS} ms`);
  }

  private onExit(exit: Exit, livedMs: number, service?: Service): void {
    if ((service && service !== this.service) || this.stopping) return;
    const clean = exit.code === 0 && exit.signal === null;
    if (clean) {
      this.fastExits = livedMs < FAST_EXIT_MS ? this.fastExits + 1 : 0;
      if (this.fastExits < MAX_FAST_EXITS) {
        this.opts.log.info('virtiofsd exited after its VM let go; starting a fresh one for the next boot or plug');
        void this.start().catch((err: Error) => this.fail(err.message));
        return;
      }
    }
    const how = exit.signal
      ? `was killed by ${exit.signal}`
      : exit.code === null
        ? 'disappeared while its share was plugged in'
        : clean
          ? `exited ${MAX_FAST_EXITS} times within ${FAST_EXIT_MS} ms of starting`
          : `exited with status ${exit.code}`;
    const why = tail(this.opts.logFile, this.logFrom);
    this.fail(`virtiofsd ${how}${why ? ` (${why})` : ''}`);
  }

  /** Starting failed (a bad path, a missing binary): nothing was ever mounted, so say just that. */
  failedToStart(why: string): void {
    this.set('failed', `virtiofsd could not start: ${why}`);
    this.opts.log.error({ vm: this.opts.vm, share: 'failed' }, `SHARE FAILED: ${this.detail}`);
  }

  private fail(why: string): void {
    const detail = `${why}. The share of VM "${this.opts.vm}" is dead: anything in the guest touching it will hang until the VM is stopped. Stop the VM, then start it again.`;
    this.set('failed', detail);
    this.opts.log.error({ vm: this.opts.vm, share: 'failed' }, `SHARE FAILED: ${detail}`);
  }

  private set(state: ShareState, detail: string): void {
    this.state = state;
    this.detail = detail;
    this.emit('state', state, detail);
  }
}
