import { EventEmitter } from 'node:events';
import { Backoff } from '../backoff.js';
import type { Logger } from '../log.js';
import { Connection, type AnyHandler } from '../protocol/connection.js';
import { ProtocolError } from '../protocol/messages.js';
import type { MethodDescriptor, MethodTable, NotificationHandler, NotificationParams, Params, ResultOf } from '../protocol/methods.js';
import { PortalsChanged } from '../protocol/session.js';
import { describeGuestLink, openGuestLink, type GuestLinkSpec } from '../transport/guest-link.js';

/**
 * The guest's one link to the host: connect, say hello, and keep reconnecting
 * with a capped backoff whenever the link drops (host daemon restart, VM
 * migration, a frame the host refused).
 */
export interface HostLinkOptions {
  spec: GuestLinkSpec;
  methods: MethodTable;
  /** Handlers for what the host calls; portals may add theirs later with `handle`. */
  handlers?: ReadonlyMap<string, AnyHandler>;
  agent: { name: string; version: string };
  log: Logger;
  minDelayMs?: number;
  maxDelayMs?: number;
}

/**
 * Events: 'up' (portals: string[] | undefined) when a link is up, with the
 * portals the host serves this VM (undefined from a version-1 host, which
 * serves all it has); 'portals' (portals: string[]) when that changes;
 * 'down' (reason).
 */
export class HostLink extends EventEmitter {
  private conn: Connection | undefined;
  private readonly handlers: Map<string, AnyHandler>;
  private readonly notificationHandlers = new Map<string, NotificationHandler>();
  private servedPortals: string[] | undefined;
  private stopped = false;
  private readonly backoff: Backoff;
  private vmName: string | undefined;
  private lastProblem = '';

  constructor(private readonly opts: HostLinkOptions) {
    super();
    this.backoff = new Backoff(opts.minDelayMs ?? 200, opts.maxDelayMs ?? 5000);
    this.handlers = new Map(opts.handlers ?? []);
    this.onNotification(PortalsChanged.name, (params) => {
      this.servedPortals = (params as NotificationParams<typeof PortalsChanged>).portals;
      this.emit('portals', this.servedPortals);
    });
  }

  /** Answer `method` when the host calls it, on this link and every later one. */
  handle(method: string, handler: AnyHandler): void {
    this.handlers.set(method, handler);
  }

  onNotification(name: string, handler: NotificationHandler): void {
    this.notificationHandlers.set(name, handler);
  }

  /** Stop handling `name`, if `handler` still is its handler. */
  offNotification(name: string, handler: NotificationHandler): void {
    if (this.notificationHandlers.get(name) === handler) this.notificationHandlers.delete(name);
  }

  /** What the host said it serves this VM; undefined before the first welcome, or from a version-1 host. */
  get portals(): string[] | undefined {
    return this.servedPortals;
  }

  get connected(): boolean {
    return !!this.conn && !this.conn.isClosed && this.conn.negotiatedVersion !== undefined;
  }

  get vm(): string | undefined {
    return this.vmName;
  }

  start(): void {
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.backoff.stop();
    this.conn?.close('guest backend stopping');
  }

  /** Wait until the link is up (at most `waitMs`), then call the host. */
  async request<M extends MethodDescriptor>(method: M, params: Params<M>, opts: { signal?: AbortSignal; waitMs?: number } = {}): Promise<ResultOf<M>> {
    if (!this.connected) await this.waitConnected(opts.waitMs ?? 3000);
    return this.conn!.request(method, params, { signal: opts.signal });
  }

  private waitConnected(ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('up', onUp);
        reject(new ProtocolError('not-ready', `not connected to the host (${describeGuestLink(this.opts.spec)}): ${this.lastProblem || 'still connecting'}`));
      }, ms);
      const onUp = () => (clearTimeout(timer), resolve());
      this.once('up', onUp);
    });
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const { log } = this.opts;
    let conn: Connection | undefined;
    try {
      const stream = await openGuestLink(this.opts.spec);
      conn = new Connection({ role: 'guest', stream, methods: this.opts.methods, handlers: this.handlers, notificationHandlers: this.notificationHandlers, log });
      const current = conn;
      conn.once('close', (reason: string) => {
        this.lastProblem = reason;
        if (this.conn !== current) return; // never came up: connect() reports it
        this.conn = undefined;
        log.warn({ reason }, 'link to the host closed; reconnecting');
        this.emit('down', reason);
        this.schedule();
      });
      const { vm, version, portals } = await conn.helloAsGuest(this.opts.agent, 3000);
      this.conn = conn;
      this.vmName = vm;
      this.servedPortals = portals;
      this.backoff.reset();
      log.info({ vm, version, portals: portals ?? 'all (a version-1 host)', link: describeGuestLink(this.opts.spec) }, 'connected to the host');
      this.emit('up', portals);
    } catch (err) {
      conn?.close('handshake failed');
      const problem = (err as Error).message;
      if (problem !== this.lastProblem) log.warn({ link: describeGuestLink(this.opts.spec) }, `cannot reach the host: ${problem}`);
      this.lastProblem = problem;
      this.schedule();
    }
  }

  private schedule(): void {
    if (!this.stopped) this.backoff.schedule(() => void this.connect());
  }
}
