import net from 'node:net';
import { z } from 'zod';
import { childLogger, type Logger } from '../log.js';
import { sendWithFds } from '../native/fds.js';
import { DEFAULT_MAX_MESSAGE_BYTES, jsonLine, JsonLineStream } from './json-lines.js';
import { SubscriptionQueue } from './subscription-queue.js';

/**
 * A QMP client: the QMP layer on top of the JSON-lines protocol layer. Every command
 * carries its own id so replies can be routed even when callers run commands
 * concurrently, and every failure names the phase it happened in, because "QMP
 * failed" is useless when a share does not appear in a guest.
 */

export const QmpGreeting = z.object({
  QMP: z.object({
    version: z.object({
      qemu: z.object({ major: z.number().int(), minor: z.number().int(), micro: z.number().int() }),
      package: z.string(),
    }),
    capabilities: z.array(z.string()),
  }),
});
export type QmpGreeting = z.infer<typeof QmpGreeting>;

const QmpId = z.union([z.string(), z.number()]);

export const QmpSuccessReply = z.object({ return: z.unknown(), id: QmpId.optional() });
export type QmpSuccessReply = z.infer<typeof QmpSuccessReply>;

export const QmpErrorReply = z.object({
  error: z.object({ class: z.string(), desc: z.string() }),
  id: QmpId.optional(),
});
export type QmpErrorReply = z.infer<typeof QmpErrorReply>;

export const QmpEvent = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).default({}),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }),
});
export type QmpEvent = z.infer<typeof QmpEvent>;

export type QmpRunState = 'idle' | 'connecting' | 'negotiating' | 'running' | 'disconnecting';
export type QmpPhase = 'connect' | 'negotiate' | 'execute';
/** Why it failed, so callers can tell "QEMU said no" from "QEMU is gone". */
export type QmpFailure = 'qemu-error' | 'timeout' | 'aborted' | 'disconnected' | 'protocol' | 'io';

export class QmpError extends Error {
  readonly phase: QmpPhase;
  readonly reason: QmpFailure;
  readonly command: string | undefined;
  /** QEMU's own `error.class` and `error.desc`, when QEMU answered with an error. */
  readonly errorClass: string | undefined;
  readonly errorDesc: string | undefined;

  constructor(
    phase: QmpPhase,
    reason: QmpFailure,
    detail: string,
    opts: { command?: string; errorClass?: string; errorDesc?: string; cause?: unknown } = {},
  ) {
    const what = opts.command ? `QMP ${phase} '${opts.command}'` : `QMP ${phase}`;
    super(`${what} failed: ${detail}`, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'QmpError';
    this.phase = phase;
    this.reason = reason;
    this.command = opts.command;
    this.errorClass = opts.errorClass;
    this.errorDesc = opts.errorDesc;
  }
}

export interface QmpClientOptions {
  /** Shown in logs, e.g. the VM's name. */
  name?: string;
  logger?: Logger;
  maxMessageBytes?: number;
}

export interface QmpConnectOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface QmpExecuteOptions<T> {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Validate `return` with this schema; a mismatch is a protocol error. */
  result?: z.ZodType<T>;
  /** Descriptors sent with the command as SCM_RIGHTS, for `getfd` and `add-fd`; the caller still owns (and closes) them. */
  fds?: number[];
}

export interface WaitForEventOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Pending {
  command: string;
  phase: QmpPhase;
  resolve(value: unknown): void;
  reject(err: QmpError): void;
}

type EventListener = (event: QmpEvent) => void;
type DisconnectListener = (error: QmpError | undefined) => void;

const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_EXECUTE_TIMEOUT_MS = 30_000;

export class QmpClient {
  private runState: QmpRunState = 'idle';
  private stream: JsonLineStream | undefined;
  private socket: net.Socket | undefined;
  private pending = new Map<string, Pending>();
  private nextId = 1;
  private eventListeners = new Set<EventListener>();
  private disconnectListeners = new Set<DisconnectListener>();
  /** QEMU said SHUTDOWN: its hanging up next is the normal end, not a failure to shout about. */
  private shutdownSeen = false;
  private greetingWaiter: { message(msg: unknown): void; closed(cause: Error | undefined): void } | undefined;
  private closeWaiter: Promise<void> | undefined;
  /** Lets disconnect() stop a connect() that is still under way. */
  private connectAbort: AbortController | undefined;
  private log: Logger;
  private lastGreeting: QmpGreeting | undefined;

  constructor(private readonly opts: QmpClientOptions = {}) {
    this.log = opts.logger ?? childLogger({ component: 'qmp', vm: opts.name });
  }

  get state(): QmpRunState {
    return this.runState;
  }

  /** What QEMU announced on the last successful connect: its version and capabilities. */
  get greeting(): QmpGreeting | undefined {
    return this.lastGreeting;
  }

  /** Connect, read the greeting and leave capabilities negotiation mode. */
  async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpGreeting> {
    if (this.runState !== 'idle') throw new Error(`QMP connect: client is ${this.runState}, not idle`);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.connectAbort = new AbortController();
    const deadline = AbortSignal.any([AbortSignal.timeout(timeoutMs), this.connectAbort.signal, ...(opts.signal ? [opts.signal] : [])]);
    this.runState = 'connecting';
    this.shutdownSeen = false;
    try {
      const socket = await openSocket(socketPath, deadline, timeoutMs);
      this.attach(socket);
      this.runState = 'negotiating';
      const greeting = await this.readGreeting(deadline, timeoutMs);
      await this.send('qmp_capabilities', undefined, 'negotiate', { signal: deadline });
      if (deadline.aborted) throw new QmpError('negotiate', 'aborted', 'disconnected while connecting');
      this.runState = 'running';
      this.lastGreeting = greeting;
      this.log.debug({ socketPath, qemu: greeting.QMP.version.qemu }, 'QMP connected');
      return greeting;
    } catch (err) {
      this.stream?.close();
      this.runState = 'idle';
      throw err;
    } finally {
      this.connectAbort = undefined;
    }
  }

  /** Run one command; resolves with QEMU's `return`, rejects with a QmpError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions<T> = {}): Promise<T> {
    if (this.runState !== 'running') {
      return Promise.reject(
        new QmpError('execute', 'disconnected', `client is ${this.runState}, not running`, { command }),
      );
    }
    const timeout = AbortSignal.timeout(opts.timeoutMs ?? DEFAULT_EXECUTE_TIMEOUT_MS);
    const signal = opts.signal ? AbortSignal.any([timeout, opts.signal]) : timeout;
    return this.send<T>(command, args, 'execute', { signal, ...(opts.result ? { result: opts.result } : {}), ...(opts.fds?.length ? { fds: opts.fds } : {}) });
  }

  onEvent(listener: EventListener): () => void {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  onDisconnect(listener: DisconnectListener): () => void {
    this.disconnectListeners.add(listener);
    return () => this.disconnectListeners.delete(listener);
  }

  /**
   * Resolve with the first event matching `predicate`. Register before sending the
   * command that causes it: QEMU may emit the event before its reply.
   */
  waitForEvent(predicate: (event: QmpEvent) => boolean, opts: WaitForEventOptions = {}): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? DEFAULT_EXECUTE_TIMEOUT_MS;
      const cleanup = () => {
        clearTimeout(timer);
        offEvent();
        offClose();
        opts.signal?.removeEventListener('abort', onAbort);
      };
      const fail = (err: QmpError) => {
        cleanup();
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new QmpError('execute', 'timeout', `no matching event within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const onAbort = () => fail(new QmpError('execute', 'aborted', 'wait for event aborted', { cause: opts.signal?.reason }));
      const offEvent = this.onEvent((event) => {
        if (!predicate(event)) return;
        cleanup();
        resolve(event);
      });
      const offClose = this.onDisconnect((err) =>
        fail(new QmpError('execute', 'disconnected', 'connection closed while waiting for an event', { cause: err })),
      );
      if (opts.signal?.aborted) return onAbort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      if (this.runState === 'idle') fail(new QmpError('execute', 'disconnected', 'client is not connected'));
    });
  }

  /** All events from now on, until the connection closes or `signal` aborts. */
  events(opts: { signal?: AbortSignal; maxQueued?: number } = {}): AsyncIterableIterator<QmpEvent> {
    return new SubscriptionQueue<QmpEvent>(
      (push, end) => {
        const offEvent = this.onEvent(push);
        const offClose = this.onDisconnect(end);
        if (this.runState === 'idle') end();
        return () => {
          offEvent();
          offClose();
        };
      },
      {
        ...opts,
        onOverflow: (dropped) => this.log.warn({ event: dropped.event }, 'QMP event queue full; oldest event dropped'),
      },
    );
  }

  async disconnect(): Promise<void> {
    if (this.runState === 'idle') return;
    this.connectAbort?.abort(new Error('disconnect() called while connecting'));
    this.runState = 'disconnecting';
    this.socket?.end();
    const forced = setTimeout(() => this.stream?.close(), 1000);
    await this.closeWaiter;
    clearTimeout(forced);
  }

  private attach(socket: net.Socket): void {
    this.socket = socket;
    let resolveClosed!: () => void;
    this.closeWaiter = new Promise((resolve) => (resolveClosed = resolve));
    this.stream = new JsonLineStream(
      socket,
      {
        onMessage: (msg) => this.route(msg),
        onClose: (err) => {
          this.onClosed(err);
          resolveClosed();
        },
      },
      this.opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    );
  }

  private readGreeting(signal: AbortSignal, timeoutMs: number): Promise<QmpGreeting> {
    return new Promise<QmpGreeting>((resolve, reject) => {
      const onAbort = () => {
        this.greetingWaiter = undefined;
        const timedOut = signal.reason instanceof DOMException && signal.reason.name === 'TimeoutError';
        reject(
          new QmpError('negotiate', timedOut ? 'timeout' : 'aborted', timedOut ? `no greeting within ${timeoutMs} ms` : 'aborted'),
        );
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      const settle = () => {
        signal.removeEventListener('abort', onAbort);
        this.greetingWaiter = undefined;
      };
      this.greetingWaiter = {
        message: (msg) => {
          settle();
          const parsed = QmpGreeting.safeParse(msg);
          if (parsed.success) return resolve(parsed.data);
          const err = new QmpError('negotiate', 'protocol', `unexpected greeting ${excerpt(msg)}`, { cause: parsed.error });
          this.stream?.close(err);
          reject(err);
        },
        closed: (cause) => {
          settle();
          const detail = cause ? `connection lost before the greeting: ${cause.message}` : 'QEMU closed the connection before the greeting';
          reject(new QmpError('negotiate', 'disconnected', detail, { cause }));
        },
      };
    });
  }

  /** `T` is only as true as `opts.result` makes it; without a schema it is the caller's word. */
  private send<T>(
    command: string,
    args: Record<string, unknown> | undefined,
    phase: QmpPhase,
    opts: { signal: AbortSignal; result?: z.ZodType<T>; fds?: number[] },
  ): Promise<T> {
    const id = `xdpvm-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const done = () => {
        this.pending.delete(id);
        opts.signal.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        done();
        const timedOut = opts.signal.reason instanceof DOMException && opts.signal.reason.name === 'TimeoutError';
        const detail = timedOut ? 'no reply in time (a late reply will be dropped)' : 'cancelled by caller';
        reject(new QmpError(phase, timedOut ? 'timeout' : 'aborted', detail, { command, cause: opts.signal.reason }));
      };
      this.pending.set(id, {
        command,
        phase,
        resolve: (value) => {
          done();
          if (!opts.result) return resolve(value as T);
          const parsed = opts.result.safeParse(value);
          if (parsed.success) return resolve(parsed.data);
          reject(new QmpError(phase, 'protocol', `unexpected return ${excerpt(value)}`, { command, cause: parsed.error }));
        },
        reject: (err) => {
          done();
          reject(err);
        },
      });
      if (opts.signal.aborted) return onAbort();
      opts.signal.addEventListener('abort', onAbort, { once: true });
      const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      if (opts.fds) {
        const socket = this.socket;
        if (!socket) return this.pending.get(id)?.reject(new QmpError(phase, 'io', 'could not send: not connected', { command }));
        // QEMU takes the descriptors that arrive with the command's bytes (qemu_chr_fe_get_msgfd).
        sendWithFds(socket, jsonLine(message), opts.fds).catch((cause: unknown) =>
          this.pending.get(id)?.reject(new QmpError(phase, 'io', `could not send the descriptors: ${(cause as Error).message}`, { command, cause })),
        );
        return;
      }
      try {
        this.stream?.send(message);
      } catch (cause) {
        this.pending.get(id)?.reject(new QmpError(phase, 'io', 'could not send', { command, cause }));
      }
    });
  }

  private route(msg: unknown): void {
    if (this.greetingWaiter) return this.greetingWaiter.message(msg);
    if (!isObject(msg)) return this.drop(msg, 'not an object');
    if ('event' in msg) {
      const parsed = QmpEvent.safeParse(msg);
      if (!parsed.success) return this.drop(msg, 'malformed event');
      if (parsed.data.event === 'SHUTDOWN') this.shutdownSeen = true;
      for (const listener of [...this.eventListeners]) {
        try {
          listener(parsed.data);
        } catch (err) {
          this.log.error({ err, event: parsed.data.event }, 'QMP event listener threw');
        }
      }
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (!pending) return this.drop(msg, 'reply matches no pending command');
    if ('return' in msg) {
      const parsed = QmpSuccessReply.safeParse(msg);
      if (parsed.success) return pending.resolve(parsed.data.return);
    } else if ('error' in msg) {
      const parsed = QmpErrorReply.safeParse(msg);
      if (parsed.success) {
        const { class: errorClass, desc } = parsed.data.error;
        return pending.reject(
          new QmpError(pending.phase, 'qemu-error', `${errorClass}: ${desc}`, {
            command: pending.command,
            errorClass,
            errorDesc: desc,
          }),
        );
      }
    }
    pending.reject(new QmpError(pending.phase, 'protocol', `malformed reply ${excerpt(msg)}`, { command: pending.command }));
  }

  private drop(msg: unknown, why: string): void {
    this.log.warn({ message: excerpt(msg) }, `QMP message dropped: ${why}`);
  }

  private onClosed(cause: Error | undefined): void {
    const expected = this.runState === 'disconnecting' && cause === undefined;
    const why = expected ? 'disconnected by client' : cause ? `connection lost: ${cause.message}` : 'QEMU closed the connection';
    const failure: QmpFailure = cause && !(cause as NodeJS.ErrnoException).code ? 'protocol' : 'disconnected';
    for (const p of [...this.pending.values()]) {
      p.reject(new QmpError(p.phase, failure, why, { command: p.command, cause }));
    }
    this.greetingWaiter?.closed(cause);
    this.runState = 'idle';
    this.stream = undefined;
    this.socket = undefined;
    const err = expected ? undefined : new QmpError('execute', failure, why, { cause });
    if (err && this.shutdownSeen && !cause) this.log.debug('QMP closed after the guest shut down');
    else if (err) this.log.warn({ err }, 'QMP connection closed');
    for (const listener of [...this.disconnectListeners]) listener(err);
  }
}

function openSocket(path: string, signal: AbortSignal, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path });
    const finish = (err?: Error) => {
      signal.removeEventListener('abort', onAbort);
      socket.off('error', finish);
      if (!err) return resolve(socket);
      socket.destroy();
      const timedOut = signal.aborted && signal.reason instanceof DOMException && signal.reason.name === 'TimeoutError';
      const reason: QmpFailure = timedOut ? 'timeout' : signal.aborted ? 'aborted' : 'io';
      const detail = timedOut ? `no connection within ${timeoutMs} ms` : err.message;
      reject(new QmpError('connect', reason, `${path}: ${detail}`, { cause: err }));
    };
    const onAbort = () => finish(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => finish());
    socket.once('error', finish);
  });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function excerpt(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}
