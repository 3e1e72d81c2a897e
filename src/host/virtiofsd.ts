import { EventEmitter } from 'node:events';
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { startService, type Exit, type Service } from '../exec.js';
import type { Logger } from '../log.js';
import { listProcesses } from '../proc.js';

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
 */
export type ShareState = 'stopped' | 'starting' | 'ready' | 'attached' | 'failed';

export interface VirtiofsdOptions {
  vm: string;
  binary: string;
  source: string;
  socket: string;
  cache: 'none' | 'auto' | 'always';
  logFile: string;
  log: Logger;
  /** For an adopted process whose exit status we cannot see: was its share still plugged in? */
  stillAttached?: () => Promise<boolean>;
}

const SOCKET_WAIT_MS = 5000;
const FAST_EXIT_MS = 200;
const MAX_FAST_EXITS = 3;
const ADOPTED_POLL_MS = 500;

/** The virtiofsd process serving `socket`, found by its command line. */
export function findVirtiofsd(socket: string): number | undefined {
  return listProcesses().find((p) => p.argv.includes(`--socket-path=${socket}`) && path.basename(p.argv[0] ?? '').includes('virtiofsd'))?.pid;
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
    const service = startService(`virtiofsd[${this.opts.vm}]`, this.opts.binary, this.args(), { outliveParent: { logFile: this.opts.logFile } });
    this.service = service;
    void service.exited.then((exit) => this.onExit(exit, Date.now() - started, service));
    await this.waitForSocket(service);
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
