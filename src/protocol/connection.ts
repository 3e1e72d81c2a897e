import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { guestLogText } from '../guest-input.js';
import { isProgrammingError, thrownAt, type Logger } from '../log.js';
import { encodeFrame, FrameDecoder, FrameError, MAX_FRAME_BYTES } from './framing.js';
import { peerLogLimiter, type LimitedLevel, type LogLimiter } from './log-limiter.js';
import {
  describeIssues,
  Frame,
  MIN_PROTOCOL_VERSION,
  NOTIFICATIONS_SINCE,
  PROTOCOL_VERSION,
  ProtocolError,
  type ErrorCode,
  type Failure,
  type Hello,
  type Notification,
  type Request,
} from './messages.js';
import type { HandlerContext, MethodDescriptor, MethodTable, NotificationDescriptor, NotificationHandler, NotificationParams, Params, ResultOf } from './methods.js';

/**
 * Layer 2 of the protocol: request ids, the pending map, the version handshake
 * and cancellation in both directions. Symmetric: the guest calls host methods
 * (a file chooser) and the host calls guest methods (unmount a share).
 */
/** How long a closing link may take to flush its last frames before it is destroyed. */
const CLOSE_FLUSH_MS = 1000;

export type Role = 'guest' | 'host';

export type AnyHandler = (params: unknown, ctx: HandlerContext) => Promise<unknown>;

export interface ConnectionOptions {
  role: Role;
  stream: Duplex;
  methods: MethodTable;
  /** Handlers for the methods the peer may call on us. */
  handlers?: ReadonlyMap<string, AnyHandler>;
  /** Handlers for the notifications the peer may send us (protocol version 2 on). */
  notificationHandlers?: ReadonlyMap<string, NotificationHandler>;
  log: Logger;
  maxFrameBytes?: number;
  /** Most requests from the peer allowed in flight at once; more get `busy`. */
  maxInFlight?: number;
  /** Most bytes of output queued for a peer that is not reading; past it the link is closed. */
  maxQueuedBytes?: number;
  /** How long output may stay backed up (reading paused) with none of it reaching the peer before the link is closed. */
  stallMs?: number;
  /**
   * Links with the same scope share their log bursts (see log-limiter.ts).
   * Defaults to the logger's `vm` binding, else the link alone.
   */
  logScope?: string;
  logLimiter?: LogLimiter;
}

/** What the host said in its welcome. `portals` is absent from a version-1 host, which serves everything it knows. */
export interface WelcomeInfo {
  vm: string;
  version: number;
  portals?: string[];
}

interface Pending {
  method: MethodDescriptor;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

const CANCELLED_MEMORY = 256;
/** Four frames at the cap: room for a burst of large results, not for a guest that never reads. */
export const DEFAULT_MAX_QUEUED_BYTES = 4 * MAX_FRAME_BYTES;
export const DEFAULT_STALL_MS = 15_000;
/** The err frame's own cap, in UTF-16 units as zod counts them. */
const MAX_ERROR_MESSAGE = 1024;
let anonymousLinks = 0;

export class Connection extends EventEmitter {
  readonly role: Role;
  private readonly stream: Duplex;
  private readonly decoder: FrameDecoder;
  private readonly log: Logger;
  private readonly pending = new Map<number, Pending>();
  private readonly incoming = new Map<number, Incoming>();
  private readonly recentlyCancelled: number[] = [];
  private nextId = 1;
  private closed = false;
  private corked = false;
  /** Reading is paused until the peer takes what we already owe it. */
  private backedUp = false;
  private stallTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly maxQueuedBytes: number;
  private readonly limiter: LogLimiter;
  private readonly logScope: string;
  private readonly ownsLogScope: boolean;
  private version: number | undefined;
  private onWelcome: ((welcome: WelcomeInfo) => void) | undefined;
  private onHello: ((hello: Hello) => void) | undefined;

  constructor(private readonly opts: ConnectionOptions) {
    super();
    this.role = opts.role;
    this.stream = opts.stream;
    this.log = opts.log;
    this.decoder = new FrameDecoder(opts.maxFrameBytes ?? MAX_FRAME_BYTES);
    this.maxQueuedBytes = opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
    this.limiter = opts.logLimiter ?? peerLogLimiter;
    const vm = opts.log.bindings?.().vm;
    this.logScope = opts.logScope ?? (typeof vm === 'string' ? `vm:${vm}` : `link:${++anonymousLinks}`);
    this.ownsLogScope = opts.logScope === undefined && typeof vm !== 'string';
    this.stream.on('data', (chunk: Buffer) => this.receive(chunk));
    this.stream.on('error', (err: Error) => this.close(`link error: ${err.message}`));
    this.stream.on('close', () => this.close('link closed'));
    this.stream.on('end', () => this.close('peer closed the link'));
  }

  get negotiatedVersion(): number | undefined {
    return this.version;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Guest side: send hello and wait for the host's welcome. A host that picks
   * a version we do not speak is refused with a message naming both.
   */
  helloAsGuest(agent: Hello['agent'], timeoutMs = 5000): Promise<WelcomeInfo> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.onWelcome = undefined;
        reject(new ProtocolError('not-ready', `no welcome from the host within ${timeoutMs} ms`));
      }, timeoutMs);
      this.onWelcome = (welcome) => {
        clearTimeout(timer);
        this.onWelcome = undefined;
        if (welcome.version < MIN_PROTOCOL_VERSION || welcome.version > PROTOCOL_VERSION) {
          const message = `the host chose protocol version ${welcome.version}; this guest speaks ${MIN_PROTOCOL_VERSION}-${PROTOCOL_VERSION}`;
          this.fail(null, 'unsupported-version', message, true, 'unsupported-version');
          reject(new ProtocolError('unsupported-version', message));
          return;
        }
        resolve(welcome);
      };
      this.once('close', (reason: string) => {
        clearTimeout(timer);
        reject(new ProtocolError('failed', reason));
      });
      this.send({ t: 'hello', versions: [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION], agent });
    });
  }

  /**
   * Host side: answer hellos for `vm`. The first one resolves; a later hello on
   * the same link means the guest backend restarted (virtio-serial has no
   * connection of its own), so the session is reset.
   */
  acceptGuest(vm: string, timeoutMs = 10_000, opts: { portals?: () => string[] } = {}): Promise<Hello> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new ProtocolError('not-ready', `no hello from the guest within ${timeoutMs} ms`));
        this.close('handshake timed out');
      }, timeoutMs);
      let first = true;
      this.onHello = (said) => {
        // The agent is only ever shown: it leaves this layer cleaned, whoever logs it.
        const hello: Hello = { ...said, agent: { name: guestLogText(said.agent.name, 64), version: guestLogText(said.agent.version, 32) } };
        const [min, max] = hello.versions;
        const version = Math.min(max, PROTOCOL_VERSION);
        if (version < Math.max(min, MIN_PROTOCOL_VERSION)) {
          this.fail(null, 'unsupported-version', `guest speaks versions ${min}-${max}; host speaks ${MIN_PROTOCOL_VERSION}-${PROTOCOL_VERSION}`, true, 'unsupported-version');
          return;
        }
        if (!first) {
          this.limited('hello-again', 'info', { agent: hello.agent }, 'guest said hello again: its backend restarted, resetting the session');
          this.reset('guest backend restarted');
        }
        this.version = version;
        // A v1 guest's welcome schema is strict: it gets no key it does not know.
        const portals = version >= NOTIFICATIONS_SINCE ? opts.portals?.() : undefined;
        this.send({ t: 'welcome', version, vm, ...(portals ? { portals } : {}) });
        if (first) {
          first = false;
          clearTimeout(timer);
          resolve(hello);
        }
        this.emit('hello', hello);
      };
      this.once('close', (reason: string) => {
        clearTimeout(timer);
        if (first) reject(new ProtocolError('failed', reason));
      });
    });
  }

  /**
   * Send a notification. A peer that negotiated version 1 has no
   * notifications: nothing is sent and the answer is false, so callers can
   * fall back (or simply accept that an old peer misses it).
   */
  notify<N extends NotificationDescriptor>(note: N, params: NotificationParams<N>): boolean {
    const allowed = this.role === 'guest' ? 'guest-to-host' : 'host-to-guest';
    if (note.direction !== allowed) throw new Error(`${this.role} may not send ${note.name}`);
    if (this.closed || this.version === undefined || this.version < NOTIFICATIONS_SINCE) return false;
    const checked = note.params.safeParse(params);
    if (!checked.success) throw new ProtocolError('invalid-params', `${note.name}: ${describeIssues(checked.error)}`);
    this.send({ t: 'note', method: note.name, params: checked.data });
    return true;
  }

  request<M extends MethodDescriptor>(method: M, params: Params<M>, opts: { signal?: AbortSignal } = {}): Promise<ResultOf<M>> {
    const allowed = this.role === 'guest' ? 'guest-to-host' : 'host-to-guest';
    if (method.direction !== allowed) throw new Error(`${this.role} may not call ${method.name}`);
    if (this.closed) return Promise.reject(new ProtocolError('failed', 'link is closed'));
    if (this.version === undefined) return Promise.reject(new ProtocolError('not-ready', 'handshake not finished'));
    const checked = method.params.safeParse(params);
    if (!checked.success) {
      return Promise.reject(new ProtocolError('invalid-params', `${method.name}: ${describeIssues(checked.error)}`));
    }
    const signal = opts.signal;
    if (signal?.aborted) return Promise.reject(new ProtocolError('cancelled', `${method.name} was cancelled`));
    const id = this.allocateId();
    return new Promise<ResultOf<M>>((resolve, reject) => {
      const onAbort = () => {
        if (!this.pending.delete(id)) return;
        this.rememberCancelled(id);
        this.send({ t: 'cancel', id });
        reject(new ProtocolError('cancelled', `${method.name} was cancelled`));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => signal?.removeEventListener('abort', onAbort);
      this.pending.set(id, {
        method,
        resolve: (v) => (done(), resolve(v as ResultOf<M>)),
        reject: (e) => (done(), reject(e)),
      });
      this.send({ t: 'req', id, method: method.name, params: checked.data });
    });
  }

  close(reason = 'closed', flush = false): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.stallTimer);
    this.reset(reason);
    // Let a last error frame out before the link goes.
    if (this.corked) {
      this.corked = false;
      this.stream.uncork();
    }
    // After a refused frame, its error frame may still be queued (the peer was slow to read): end
    // the stream so it leaves, and destroy it a second later whatever happens. Any other close
    // (a backed-up link among them) destroys at once: that drops what was queued and gives its memory back.
    if (flush && this.stream.writableLength > 0 && !this.stream.destroyed) {
      this.stream.end();
      setTimeout(() => this.stream.destroy(), CLOSE_FLUSH_MS).unref();
    } else this.stream.destroy();
    if (this.ownsLogScope) this.limiter.endScope(this.logScope);
    this.emit('close', reason);
  }

  private reset(reason: string): void {
    for (const [, p] of this.pending) p.reject(new ProtocolError('failed', reason));
    this.pending.clear();
    for (const [, inc] of this.incoming) inc.abort(new ProtocolError('cancelled', reason));
    this.incoming.clear();
  }

  private allocateId(): number {
    const id = this.nextId;
    this.nextId = this.nextId >= 2 ** 31 - 1 ? 1 : this.nextId + 1;
    return id;
  }

  private rememberCancelled(id: number): void {
    this.recentlyCancelled.push(id);
    if (this.recentlyCancelled.length > CANCELLED_MEMORY) this.recentlyCancelled.shift();
  }

  private send(frame: Frame): void {
    if (this.closed && frame.t !== 'err') return;
    let bytes: Buffer;
    try {
      bytes = encodeFrame(frame, this.opts.maxFrameBytes ?? MAX_FRAME_BYTES);
    } catch (err) {
      // Only our own result can be too big; tell the peer instead of going silent.
      if (frame.t === 'res') return this.fail(frame.id, 'too-large', (err as Error).message, false);
      throw err;
    }
    if (this.stream.destroyed) return;
    // Frames sent in one turn of the event loop leave in one write.
    if (!this.corked) {
      this.corked = true;
      this.stream.cork();
      process.nextTick(() => {
        this.corked = false;
        this.stream.uncork();
      });
    }
    const ok = this.stream.write(bytes, this.written);
    if (this.stream.writableLength > this.maxQueuedBytes) return this.overflowed();
    if (!ok) this.pauseUntilDrained();
  }

  /** A write reached the peer's side: a slow reader is still a reader. */
  private readonly written = (): void => {
    if (this.backedUp && !this.closed) this.stallTimer?.refresh();
  };

  /**
   * The peer is not taking our output as fast as we make it: read nothing
   * more from it until it has, since every request read is more output.
   */
  private pauseUntilDrained(): void {
    if (this.backedUp || this.closed) return;
    this.backedUp = true;
    this.stream.pause();
    this.stallTimer = setTimeout(() => this.stalled(), this.opts.stallMs ?? DEFAULT_STALL_MS);
    this.stallTimer.unref?.();
    this.stream.once('drain', () => {
      this.backedUp = false;
      clearTimeout(this.stallTimer);
      if (!this.closed) this.stream.resume();
    });
  }

  /** Results of requests already read can still pile up while reading is paused: that is bounded too. */
  private overflowed(): void {
    const queued = this.stream.writableLength;
    this.limited('output-overflow', 'warn', { queued, cap: this.maxQueuedBytes }, `closing link: the peer is not reading its replies (${queued} bytes queued, more than the ${this.maxQueuedBytes}-byte cap)`);
    this.close(`the peer is not reading: more than ${this.maxQueuedBytes} bytes of output queued`);
  }

  private stalled(): void {
    const seconds = (this.opts.stallMs ?? DEFAULT_STALL_MS) / 1000;
    this.limited('output-stalled', 'warn', { queued: this.stream.writableLength }, `closing link: the peer is not reading: none of its replies went out for ${seconds} s`);
    this.close(`the peer is not reading: its replies have not moved for ${seconds} s`);
  }

  /** A line the peer can cause: written once per burst of its kind (see log-limiter.ts). */
  private limited(kind: string, level: LimitedLevel, fields: Record<string, unknown>, msg: string): void {
    this.limiter.write(this.logScope, kind, this.log, level, fields, msg);
  }

  /**
   * Tell the peer; a fatal failure also closes the link, with one log line
   * per burst of its `kind`. `message` may quote the peer only through guestLogText.
   */
  private fail(id: number | null, code: ErrorCode, message: string, fatal = id === null, kind: string = code): void {
    const said = errorMessage(message);
    this.send({ t: 'err', id, code, message: said });
    if (!fatal) return;
    this.limited(`fatal:${kind}`, 'warn', { code }, `closing link: ${said}`);
    this.close(`${code}: ${said}`, true);
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    let raw: unknown[];
    try {
      raw = this.decoder.push(chunk);
    } catch (err) {
      const e = err as FrameError;
      this.fail(null, e.code === 'too-large' ? 'too-large' : 'bad-frame', e.message, true, `frame-${e.code}`);
      return;
    }
    for (const value of raw) {
      if (this.closed) return;
      const parsed = Frame.safeParse(value);
      if (!parsed.success) {
        this.fail(null, 'bad-frame', `malformed frame: ${describeIssues(parsed.error)}`, true, 'malformed-frame');
        return;
      }
      this.dispatch(parsed.data);
    }
  }

  private dispatch(frame: Frame): void {
    switch (frame.t) {
      case 'hello':
        if (this.role !== 'host' || !this.onHello) return this.fail(null, 'bad-frame', 'unexpected hello', true, 'unexpected-hello');
        return this.onHello(frame);
      case 'welcome':
        if (this.role !== 'guest') return this.fail(null, 'bad-frame', 'unexpected welcome', true, 'unexpected-welcome');
        this.version = frame.version;
        this.onWelcome?.({ vm: frame.vm, version: frame.version, ...(frame.portals ? { portals: frame.portals } : {}) });
        return;
      case 'note':
        return this.handleNotification(frame);
      case 'req':
        return this.handleRequest(frame);
      case 'res':
        return this.settle(frame.id, (p) => {
          const checked = p.method.result.safeParse(frame.result);
          if (checked.success) p.resolve(checked.data);
          else {
            const message = `${p.method.name}: peer sent an invalid result: ${describeIssues(checked.error)}`;
            this.limited(`invalid-result:${p.method.name}`, 'warn', {}, message);
            p.reject(new ProtocolError('invalid-result', message));
          }
        });
      case 'err':
        if (frame.id === null) {
          const said = guestLogText(frame.message, 300);
          this.limited('peer-link-error', 'warn', { code: frame.code, peerSaid: said }, 'peer reported a link error');
          return this.close(`peer: ${frame.code}: ${said}`);
        }
        return this.settle(frame.id, (p) => p.reject(new ProtocolError(frame.code, errorMessage(frame.message))));
      case 'cancel':
        this.incoming.get(frame.id)?.abort(new ProtocolError('cancelled', 'peer cancelled the request'));
        return;
    }
  }

  private settle(id: number, fn: (p: Pending) => void): void {
    const p = this.pending.get(id);
    if (!p) {
      if (this.recentlyCancelled.includes(id)) return;
      this.limited('unknown-id', 'warn', { id }, 'peer answered a request that does not exist');
      return;
    }
    this.pending.delete(id);
    fn(p);
  }

  /** A notification has no answer, so a bad one is dropped with a (limited) log line; the link stays up. */
  private handleNotification(frame: Notification): void {
    if (this.version === undefined || this.version < NOTIFICATIONS_SINCE) {
      return this.fail(null, 'bad-frame', `notifications need protocol version ${NOTIFICATIONS_SINCE}; this link speaks ${this.version ?? 'nothing yet'}`, true, 'early-notification');
    }
    const note = this.opts.methods.notification(frame.method);
    const handler = this.opts.notificationHandlers?.get(frame.method);
    const allowed = this.role === 'host' ? 'guest-to-host' : 'host-to-guest';
    if (!note || !handler || note.direction !== allowed) {
      this.limited('unknown-notification', 'warn', { method: guestLogText(frame.method, 64) }, 'dropped a notification this side does not take');
      return;
    }
    const params = note.params.safeParse(frame.params);
    if (!params.success) {
      this.limited(`invalid-notification:${note.name}`, 'warn', { issues: describeIssues(params.error) }, `dropped an invalid ${note.name} notification`);
      return;
    }
    try {
      handler(params.data);
    } catch (err) {
      this.limited(`notification-failed:${note.name}`, 'error', describeFailure(err), `${note.name} handler failed`);
    }
  }

  private handleRequest(frame: Request): void {
    if (this.version === undefined) return this.fail(frame.id, 'not-ready', 'say hello first');
    const method = this.opts.methods.get(frame.method);
    const handler = this.opts.handlers?.get(frame.method);
    const allowed = this.role === 'host' ? 'guest-to-host' : 'host-to-guest';
    if (!method || !handler || method.direction !== allowed) {
      return this.fail(frame.id, 'unknown-method', `no method ${frame.method}`);
    }
    if (this.incoming.has(frame.id)) return this.fail(frame.id, 'bad-frame', `request id ${frame.id} is already in flight`);
    if (this.incoming.size >= (this.opts.maxInFlight ?? 64)) {
      return this.fail(frame.id, 'busy', `more than ${this.opts.maxInFlight ?? 64} requests in flight`);
    }
    const params = method.params.safeParse(frame.params);
    if (!params.success) return this.fail(frame.id, 'invalid-params', `${method.name}: ${describeIssues(params.error)}`);
    const inc = new Incoming();
    this.incoming.set(frame.id, inc);
    void this.runHandler(frame.id, method, handler, params.data, inc);
  }

  private async runHandler(id: number, method: MethodDescriptor, handler: AnyHandler, params: unknown, inc: Incoming): Promise<void> {
    let outcome: { ok: true; value: unknown } | { ok: false; failure: Pick<Failure, 'code' | 'message'> };
    try {
      const value = await handler(params, { get signal() { return inc.signal; }, requestId: id });
      const checked = method.result.safeParse(value);
      outcome = checked.success
        ? { ok: true, value: checked.data }
        : { ok: false, failure: { code: 'failed', message: `${method.name} produced an invalid result` } };
      if (!checked.success) this.limited(`bad-result:${method.name}`, 'error', { issues: describeIssues(checked.error) }, `${method.name} handler returned an invalid result`);
    } catch (err) {
      const code: ErrorCode = err instanceof ProtocolError ? err.code : inc.aborted ? 'cancelled' : 'failed';
      if (!(err instanceof ProtocolError)) this.limited(`handler-failed:${method.name}`, 'error', describeFailure(err), `${method.name} handler failed`);
      outcome = { ok: false, failure: { code, message: err instanceof ProtocolError ? err.message : `${method.name} failed` } };
    }
    if (this.incoming.get(id) !== inc) return; // the session was reset meanwhile
    this.incoming.delete(id);
    if (outcome.ok) this.send({ t: 'res', id, result: outcome.value });
    else this.fail(id, outcome.failure.code, outcome.failure.message, false);
  }
}

/** Cleaned like guest text, and within the err frame's cap even when astral characters make a code point two units. */
function errorMessage(text: string): string {
  const said = guestLogText(text, MAX_ERROR_MESSAGE);
  if (said.length <= MAX_ERROR_MESSAGE) return said;
  const points = [...said];
  let units = 1;
  let keep = 0;
  while (keep < points.length && units + points[keep]!.length <= MAX_ERROR_MESSAGE) units += points[keep++]!.length;
  return `${points.slice(0, keep).join('')}…`;
}

/**
 * A handler's failure as log fields, whatever the logger's serializers. Its
 * message may quote the guest (a PortalError naming a guest's option, a
 * parser quoting its input), so it is cleaned and capped; no stack trace,
 * and for our own bugs only the place they were thrown.
 */
function describeFailure(err: unknown): Record<string, unknown> {
  if (!(err instanceof Error)) return { error: 'thrown value', detail: guestLogText(err, 300) };
  const fields: Record<string, unknown> = { error: guestLogText(err.name, 40), detail: guestLogText(err.message, 300) };
  if (isProgrammingError(err)) fields.at = thrownAt(err);
  return fields;
}

/**
 * A request from the peer. Its AbortController is made only when the handler
 * looks at its signal: most requests never do, and at tens of thousands of
 * requests a second the allocations show.
 */
class Incoming {
  private ac: AbortController | undefined;
  private reason: unknown;
  aborted = false;

  get signal(): AbortSignal {
    this.ac ??= new AbortController();
    if (this.aborted && !this.ac.signal.aborted) this.ac.abort(this.reason);
    return this.ac.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.ac?.abort(reason);
  }
}
