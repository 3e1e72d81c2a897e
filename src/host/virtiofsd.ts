import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { startService, type Exit, type Service } from '../exec.js';
import type { Logger } from '../log.js';
import { removeStaleSocket } from '../transport/hybrid-vsock.js';

/**
 * One virtiofsd per VM share, watched. virtiofsd serves one VMM connection and
 * exits 0 when the VMM lets go (the VM shut down), so a clean exit means
 * "start again for the next boot". Any other exit is a crash: a guest with the
 * share mounted then hangs on it for good (QEMU 7.2 cannot reconnect), so the
 * share is marked failed, loudly, and not restarted behind the user's back.
 */
export type ShareState = 'stopped' | 'starting' | 'ready' | 'failed';

export interface VirtiofsdOptions {
  vm: string;
  binary: string;
  source: string;
  socket: string;
  cache: 'none' | 'auto' | 'always';
  log: Logger;
  /** Restart after a clean exit (the VMM disconnected). */
  restartOnCleanExit?: boolean;
}

const SOCKET_WAIT_MS = 5000;
const FAST_EXIT_MS = 1000;
const MAX_FAST_EXITS = 3;

export class VirtiofsdSupervisor extends EventEmitter {
  private service: Service | undefined;
  private stopping = false;
  private fastExits = 0;
  state: ShareState = 'stopped';
  detail = '';

  constructor(readonly opts: VirtiofsdOptions) {
    super();
  }

  get pid(): number | undefined {
    return this.service?.pid;
  }

  args(): string[] {
    return [`--socket-path=${this.opts.socket}`, '-o', `source=${this.opts.source}`, '-o', `cache=${this.opts.cache}`, '-o', 'log_level=warn'];
  }

  async start(): Promise<void> {
    if (this.service?.running) return;
    this.stopping = false;
    this.set('starting', '');
    mkdirSync(path.dirname(this.opts.socket), { recursive: true, mode: 0o700 });
    await removeStaleSocket(this.opts.socket);
    const started = Date.now();
    const service = startService(`virtiofsd[${this.opts.vm}]`, this.opts.binary, this.args(), {
      onStderrLine: (line) => this.opts.log.warn({ virtiofsd: line }, 'virtiofsd says'),
    });
    this.service = service;
    void service.exited.then((exit) => this.onExit(service, exit, Date.now() - started));
    await this.waitForSocket(service);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const s = this.service;
    if (s?.running) await s.stop();
    this.set('stopped', '');
  }

  private async waitForSocket(service: Service): Promise<void> {
    const deadline = Date.now() + SOCKET_WAIT_MS;
    while (Date.now() < deadline) {
      if (!service.running) throw new Error(`virtiofsd for ${this.opts.vm} exited at start: ${this.detail}`);
      if (existsSync(this.opts.socket)) {
        this.set('ready', '');
        return;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    await service.stop();
    throw new Error(`virtiofsd for ${this.opts.vm} did not create ${this.opts.socket} within ${SOCKET_WAIT_MS} ms`);
  }

  private onExit(service: Service, exit: Exit, livedMs: number): void {
    if (service !== this.service || this.stopping) return;
    const clean = exit.code === 0 && exit.signal === null;
    if (clean && this.opts.restartOnCleanExit !== false) {
      this.fastExits = livedMs < FAST_EXIT_MS ? this.fastExits + 1 : 0;
      if (this.fastExits < MAX_FAST_EXITS) {
        this.opts.log.info({ vm: this.opts.vm }, 'virtiofsd exited after its VM disconnected; starting it again for the next boot');
        void this.start().catch((err: Error) => this.fail(err.message));
        return;
      }
    }
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with status ${exit.code}`;
    const tail = service.stderr.trim().split('\n').slice(-2).join(' | ');
    this.fail(`virtiofsd ${how}${tail ? ` (${tail})` : ''}`);
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
