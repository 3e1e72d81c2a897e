/**
 * AF_VSOCK stream sockets as Node streams.
 *
 * Node cannot wrap an AF_VSOCK fd in net.Socket (libuv does not recognise the
 * fd type), so the native addon in native/vsock owns the fd and a uv_poll_t,
 * reports readiness, and performs non-blocking syscalls on request. This
 * module turns that into a Duplex with backpressure and Node-style errors.
 *
 * Importing never fails: a missing or broken addon only surfaces when a
 * function that needs it is called, with the reason vsockAvailable() gives.
 */
import { EventEmitter } from 'node:events';
import { constants as osConstants } from 'node:os';
import { Duplex } from 'node:stream';
import { getSystemErrorMap } from 'node:util';
import { childLogger, type Logger } from '../log.js';
import { addonState, requireAddon } from '../native/addon.js';

export const VMADDR_CID_ANY = 0xffffffff;
export const VMADDR_PORT_ANY = 0xffffffff;
export const VMADDR_CID_LOCAL = 1;
export const VMADDR_CID_HOST = 2;

export interface VsockAddress {
  cid: number;
  port: number;
}

/** A failed syscall, shaped like Node's own errno errors. */
export interface VsockError extends Error {
  code: string;
  errno: number;
  syscall: string;
  cid?: number;
  port?: number;
}

export interface VsockSocketOptions {
  /** Keep the writable side open after the peer ends; default false, as in net. */
  allowHalfOpen?: boolean;
}

export interface ConnectOptions extends VsockSocketOptions {
  /** Give up after this long (ETIMEDOUT). Default: the kernel's vsock connect timeout (2 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface VsockServerOptions extends VsockSocketOptions {
  backlog?: number;
}

// ---------------------------------------------------------------------------
// Native binding

/** A socket fd plus its poll handle, owned by the addon. */
interface NativeHandle {
  /** Called with (status, events) when a watched event fires; status < 0 is a poll error. */
  onevent: ((status: number, events: number) => void) | undefined;
  watch(events: number): number;
  read(): Buffer | null | number;
  writev(chunks: Buffer[]): number;
  accept(): [NativeHandle, number, number] | number;
  connectError(): number;
  shutdown(): number;
  localAddress(): [number, number] | number;
  close(): void;
  setRef(on: boolean): void;
  fd(): number;
}

/** Setup calls return a handle or [-errno, failing syscall]. */
type SetupResult = NativeHandle | [number, string];

interface Binding {
  READABLE: number;
  WRITABLE: number;
  probe(): number;
  localCid(): [number, string];
  listen(cid: number, port: number, backlog: number): SetupResult;
  connect(cid: number, port: number, timeoutMs: number): SetupResult;
  testPair(): [NativeHandle, NativeHandle] | [number, string];
  openDevice(path: string): NativeHandle | number;
}

const requireBinding = (): Binding => requireAddon<Binding>('AF_VSOCK');
const load = () => addonState<Binding>();

/** Where the addon is (or would be) loaded from; for diagnostics. */
export function vsockAddonPath(): string | undefined {
  return load().path;
}

// ---------------------------------------------------------------------------
// Errors

const EAGAIN = -osConstants.errno.EAGAIN;
const ENOTCONN = -osConstants.errno.ENOTCONN;
const ENOTSOCK = -osConstants.errno.ENOTSOCK;
const ETIMEDOUT = -osConstants.errno.ETIMEDOUT;

let errorMap: Map<number, [string, string]> | undefined;

/** [code, description] for a negative errno (Node builds the map anew per call, so keep one). */
function errnoEntry(negErrno: number): [string, string] | undefined {
  errorMap ??= getSystemErrorMap();
  return errorMap.get(negErrno);
}

function errnoName(negErrno: number): string {
  return errnoEntry(negErrno)?.[0] ?? `errno ${-negErrno}`;
}

function vsockError(negErrno: number, syscall: string, addr?: VsockAddress, hint?: string): VsockError {
  const entry = errnoEntry(negErrno);
  const code = entry?.[0] ?? `E${-negErrno}`;
  const where = addr ? ` vsock ${formatAddress(addr)}` : '';
  const tail = hint ? `: ${hint}` : '';
  const err = new Error(`${syscall} ${code}${where} (${entry?.[1] ?? 'unknown error'})${tail}`) as VsockError;
  err.code = code;
  err.errno = negErrno;
  err.syscall = syscall;
  if (addr) {
    err.cid = addr.cid;
    err.port = addr.port;
  }
  return err;
}

function formatAddress(addr: VsockAddress): string {
  const show = (n: number): string => (n === VMADDR_CID_ANY ? 'any' : String(n));
  return `${show(addr.cid)}:${show(addr.port)}`;
}

function codedError(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}

function abortError(reason: unknown): Error {
  const err = codedError('ABORT_ERR', 'The operation was aborted');
  err.name = 'AbortError';
  if (reason !== undefined) (err as Error & { cause?: unknown }).cause = reason;
  return err;
}

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`${what} must be an integer in [0, 2^32-1], got ${value}`);
  }
}

// ---------------------------------------------------------------------------
// Probing

export function vsockAvailable(): { ok: true } | { ok: false; reason: string } {
  const state = load();
  if (!('binding' in state)) return { ok: false, reason: state.reason };
  const rc = state.binding.probe();
  if (rc === 0) return { ok: true };
  const name = errnoName(rc);
  if (rc === -osConstants.errno.EAFNOSUPPORT) {
    return { ok: false, reason: `kernel has no AF_VSOCK (socket() failed: ${name})` };
  }
  return { ok: false, reason: `cannot create an AF_VSOCK socket (socket() failed: ${name})` };
}

/** This machine's CID as the vsock driver reports it. */
export function localCid(): number {
  const [rc, step] = requireBinding().localCid();
  if (rc >= 0) return rc;
  let hint: string | undefined;
  if (rc === -osConstants.errno.ENOENT || rc === -osConstants.errno.ENODEV) {
    hint = 'no vsock transport is loaded (guest: virtio vsock device; host: vhost_vsock)';
  } else if (rc === -osConstants.errno.EACCES || rc === -osConstants.errno.EPERM) {
    hint = '/dev/vsock is not accessible to this user';
  }
  throw vsockError(rc, step, undefined, hint);
}

// ---------------------------------------------------------------------------
// Sockets

/** Chunks read per readiness event before yielding to the event loop. */
const READS_PER_EVENT = 16;
const READ_CHUNK = 64 * 1024;

interface PendingWrite {
  chunks: Buffer[];
  cb: (err?: Error | null) => void;
  blocked: boolean;
}

/** Drops the first `n` written bytes from `chunks` in place. */
function consumeWritten(chunks: Buffer[], n: number): void {
  let whole = 0;
  let left = n;
  for (const chunk of chunks) {
    if (left < chunk.length) break;
    left -= chunk.length;
    whole++;
  }
  chunks.splice(0, whole);
  const first = chunks[0];
  if (left > 0 && first) chunks[0] = first.subarray(left);
}

/**
 * A connected AF_VSOCK stream. Created by connectVsock() and VsockServer;
 * the constructor is not for direct use.
 */
export class VsockSocket extends Duplex {
  readonly remote: VsockAddress;
  readonly local: VsockAddress;
  #handle: NativeHandle | null;
  #bits: { READABLE: number; WRITABLE: number };
  #events = 0;
  #reading = false;
  #pending: PendingWrite | null = null;

  constructor(handle: NativeHandle, remote: VsockAddress, opts: VsockSocketOptions = {}) {
    super({
      allowHalfOpen: opts.allowHalfOpen ?? false,
      readableHighWaterMark: READ_CHUNK,
      writableHighWaterMark: READ_CHUNK,
    });
    this.#handle = handle;
    this.#bits = requireBinding();
    this.remote = Object.freeze({ ...remote });
    const local = handle.localAddress();
    this.local = Object.freeze(
      typeof local === 'number' ? { cid: VMADDR_CID_ANY, port: VMADDR_PORT_ANY } : { cid: local[0], port: local[1] },
    );
    handle.onevent = (status, events) => this.#onEvent(status, events);
  }

  /** Let the process exit while this socket is idle-open (like net.Socket#unref). */
  unref(): this {
    this.#handle?.setRef(false);
    return this;
  }

  ref(): this {
    this.#handle?.setRef(true);
    return this;
  }

  override _read(): void {
    this.#reading = true;
    this.#updateWatch();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#startWrite([chunk], cb);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this.#startWrite(
      chunks.map((c) => c.chunk),
      cb,
    );
  }

  override _final(cb: (err?: Error | null) => void): void {
    const rc = this.#handle?.shutdown() ?? 0;
    // ENOTCONN: the peer is already gone, so there is nobody left to tell.
    // ENOTSOCK: a character device has no half-close.
    cb(rc < 0 && rc !== ENOTCONN && rc !== ENOTSOCK ? vsockError(rc, 'shutdown', this.remote) : null);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const pending = this.#pending;
    this.#pending = null;
    const handle = this.#handle;
    this.#handle = null;
    this.#events = 0;
    this.#reading = false;
    if (handle) {
      handle.onevent = undefined;
      handle.close();
    }
    cb(err);
    // The in-flight write can never complete; tell its writer instead of leaving it hanging.
    pending?.cb(err ?? codedError('ERR_STREAM_DESTROYED', 'Cannot call write after a stream was destroyed'));
  }

  #onEvent(status: number, events: number): void {
    if (!this.#handle) return;
    if (status < 0) {
      // libuv reports POLLERR as a bare status and stops watching; SO_ERROR says what happened.
      this.#events = 0;
      const soError = this.#handle.connectError();
      this.destroy(vsockError(soError < 0 ? soError : status, 'read', this.remote));
      return;
    }
    if (events & this.#bits.WRITABLE) this.#flush();
    if (events & this.#bits.READABLE) this.#readSome();
  }

  #readSome(): void {
    for (let i = 0; i < READS_PER_EVENT && this.#reading && this.#handle; i++) {
      const data = this.#handle.read();
      if (data === null) {
        this.#reading = false;
        this.#updateWatch();
        this.push(null);
        return;
      }
      if (typeof data === 'number') {
        if (data !== EAGAIN) this.destroy(vsockError(data, 'read', this.remote));
        return;
      }
      if (!this.push(data)) {
        this.#reading = false;
        this.#updateWatch();
        return;
      }
    }
  }

  #startWrite(chunks: Buffer[], cb: (err?: Error | null) => void): void {
    if (!this.#handle) {
      cb(codedError('ERR_STREAM_DESTROYED', 'Cannot call write after a stream was destroyed'));
      return;
    }
    this.#pending = { chunks, cb, blocked: false };
    this.#flush();
  }

  #flush(): void {
    const pending = this.#pending;
    if (!pending || !this.#handle) return;
    while (pending.chunks.length > 0) {
      const n = this.#handle.writev(pending.chunks);
      const first = pending.chunks[0];
      if (n === EAGAIN || (n === 0 && first !== undefined && first.length > 0)) {
        pending.blocked = true;
        this.#updateWatch();
        return;
      }
      if (n < 0) {
        this.#finishWrite(vsockError(n, 'write', this.remote));
        return;
      }
      consumeWritten(pending.chunks, n);
    }
    this.#finishWrite(null);
  }

  #finishWrite(err: Error | null): void {
    const pending = this.#pending;
    this.#pending = null;
    this.#updateWatch();
    pending?.cb(err);
  }

  #updateWatch(): void {
    const handle = this.#handle;
    if (!handle) return;
    let events = 0;
    if (this.#reading) events |= this.#bits.READABLE;
    if (this.#pending?.blocked) events |= this.#bits.WRITABLE;
    if (events === this.#events) return;
    const rc = handle.watch(events);
    if (rc < 0) {
      this.destroy(vsockError(rc, 'poll', this.remote));
      return;
    }
    this.#events = events;
  }
}

/**
 * Connects to cid:port. The connect is non-blocking: the socket is watched
 * for writability and SO_ERROR decides the outcome.
 */
export function connectVsock(cid: number, port: number, opts: ConnectOptions = {}): Promise<VsockSocket> {
  try {
    const binding = requireBinding();
    checkU32(cid, 'cid');
    checkU32(port, 'port');
    const { timeoutMs, signal } = opts;
    if (timeoutMs !== undefined && (!Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 0x7fffffff)) {
      throw new RangeError(`timeoutMs must be a positive integer, got ${timeoutMs}`);
    }
    if (signal?.aborted) throw abortError(signal.reason);
    const started = binding.connect(cid, port, timeoutMs ?? 0);
    if (Array.isArray(started)) throw vsockError(started[0], started[1], { cid, port });
    return awaitConnect(binding, started, { cid, port }, opts);
  } catch (err) {
    return Promise.reject(err);
  }
}

function awaitConnect(
  binding: Binding,
  handle: NativeHandle,
  remote: VsockAddress,
  opts: ConnectOptions,
): Promise<VsockSocket> {
  const { timeoutMs, signal } = opts;
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    let settled = false;
    const settle = (err: Error | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      handle.onevent = undefined;
      handle.watch(0);
      if (err) {
        handle.close();
        reject(err);
        return;
      }
      try {
        resolve(new VsockSocket(handle, remote, opts));
      } catch (ctorErr) {
        handle.close();
        reject(ctorErr);
      }
    };
    const onAbort = (): void => settle(abortError(signal?.reason));
    handle.onevent = (status) => {
      const soError = handle.connectError();
      if (soError < 0) settle(vsockError(soError, 'connect', remote));
      else if (status < 0) settle(vsockError(status, 'connect', remote));
      else settle(null);
    };
    const rc = handle.watch(binding.WRITABLE);
    if (rc < 0) {
      settle(vsockError(rc, 'poll', remote));
      return;
    }
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => settle(vsockError(ETIMEDOUT, 'connect', remote)), timeoutMs);
    }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Test aid: two connected sockets over an AF_UNIX socketpair, driven by the
 * same native code as vsock sockets, so the data path can be exercised on
 * machines without a vsock loopback. Their addresses are placeholders.
 */
export function createTestSocketPair(opts: VsockSocketOptions = {}): [VsockSocket, VsockSocket] {
  const pair = requireBinding().testPair();
  if (typeof pair[0] === 'number') throw vsockError(pair[0], String(pair[1]));
  const [a, b] = pair as [NativeHandle, NativeHandle];
  const placeholder = { cid: VMADDR_CID_ANY, port: VMADDR_PORT_ANY };
  return [new VsockSocket(a, placeholder, opts), new VsockSocket(b, placeholder, opts)];
}

/**
 * A character device (a virtio-serial port) as a stream, through the same
 * non-blocking, poll-driven I/O as the sockets. A blocking read in Node's
 * thread pool would outlive close() and keep the port open (EBUSY for the
 * next opener) and stall process exit.
 */
export function openCharDevice(path: string, opts: VsockSocketOptions = {}): VsockSocket {
  const handle = requireBinding().openDevice(path);
  if (typeof handle === 'number') {
    const err = vsockError(handle, 'open');
    err.message = `${err.message} (${path})`;
    throw err;
  }
  return new VsockSocket(handle, { cid: VMADDR_CID_ANY, port: VMADDR_PORT_ANY }, opts);
}

// ---------------------------------------------------------------------------
// Server

const ACCEPTS_PER_EVENT = 64;
/** Errors that concern one pending connection, not the listener (see accept(2)). */
const TRANSIENT_ACCEPT_ERRORS = new Set([
  'ECONNABORTED',
  'EINTR',
  'EPROTO',
  'EPERM',
  'ENETDOWN',
  'ENOPROTOOPT',
  'EHOSTDOWN',
  'ENONET',
  'EHOSTUNREACH',
  'EOPNOTSUPP',
  'ENETUNREACH',
  'ECONNRESET',
]);
/** Out of fds or memory: retrying at once would spin, so pause accepting. */
const RESOURCE_ACCEPT_ERRORS = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);
const RESOURCE_BACKOFF_MS = 100;
const FAILURE_BACKOFF_MS = 1000;

let serverLog: Logger | undefined;

export interface VsockServerEvents {
  connection: [socket: VsockSocket];
  listening: [];
  close: [];
  error: [err: Error];
}

export class VsockServer extends EventEmitter<VsockServerEvents> {
  #handle: NativeHandle | null = null;
  #address: VsockAddress | null = null;
  #backoff: NodeJS.Timeout | undefined;
  #refed = true;
  #opts: VsockServerOptions;

  constructor(opts: VsockServerOptions = {}) {
    super();
    this.#opts = opts;
  }

  get listening(): boolean {
    return this.#handle !== null;
  }

  /** Binds and listens; pass VMADDR_PORT_ANY to let the kernel pick a free port. */
  listen(port: number, cid: number = VMADDR_CID_ANY): Promise<void> {
    try {
      const binding = requireBinding();
      checkU32(port, 'port');
      checkU32(cid, 'cid');
      if (this.#handle) throw codedError('ERR_SERVER_ALREADY_LISTEN', 'listen() called twice on one VsockServer');
      const backlog = this.#opts.backlog ?? 128;
      checkU32(backlog, 'backlog');
      const started = binding.listen(cid, port, backlog);
      if (Array.isArray(started)) throw vsockError(started[0], started[1], { cid, port });
      const local = started.localAddress();
      this.#address = typeof local === 'number' ? { cid, port } : { cid: local[0], port: local[1] };
      this.#handle = started;
      started.onevent = (status) => this.#onAcceptable(status);
      if (!this.#refed) started.setRef(false);
      this.#watch(true);
      process.nextTick(() => this.emit('listening'));
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  address(): VsockAddress {
    if (!this.#address) throw codedError('ERR_SERVER_NOT_RUNNING', 'VsockServer is not listening');
    return { ...this.#address };
  }

  /** Stops listening and frees the port; accepted sockets stay open, as with net.Server. */
  close(): Promise<void> {
    const handle = this.#handle;
    if (!handle) return Promise.resolve();
    clearTimeout(this.#backoff);
    this.#backoff = undefined;
    this.#handle = null;
    this.#address = null;
    handle.onevent = undefined;
    handle.close();
    process.nextTick(() => this.emit('close'));
    return Promise.resolve();
  }

  unref(): this {
    this.#refed = false;
    this.#handle?.setRef(false);
    this.#backoff?.unref();
    return this;
  }

  ref(): this {
    this.#refed = true;
    this.#handle?.setRef(true);
    this.#backoff?.ref();
    return this;
  }

  #watch(on: boolean): void {
    const handle = this.#handle;
    if (!handle) return;
    const rc = handle.watch(on ? requireBinding().READABLE : 0);
    if (rc < 0 && on) this.#pause(vsockError(rc, 'poll', this.#address ?? undefined), FAILURE_BACKOFF_MS);
  }

  #onAcceptable(status: number): void {
    const handle = this.#handle;
    if (!handle) return;
    if (status < 0) {
      const soError = handle.connectError();
      this.#pause(vsockError(soError < 0 ? soError : status, 'accept', this.#address ?? undefined), FAILURE_BACKOFF_MS);
      return;
    }
    for (let i = 0; i < ACCEPTS_PER_EVENT && this.#handle; i++) {
      const accepted = this.#handle.accept();
      if (typeof accepted !== 'number') {
        this.#deliver(accepted[0], { cid: accepted[1], port: accepted[2] });
        continue;
      }
      if (accepted === EAGAIN) return;
      const code = errnoName(accepted);
      if (TRANSIENT_ACCEPT_ERRORS.has(code)) continue;
      const err = vsockError(accepted, 'accept', this.#address ?? undefined);
      if (RESOURCE_ACCEPT_ERRORS.has(code)) {
        serverLog ??= childLogger({ component: 'af-vsock' });
        serverLog.warn({ err, address: this.#address }, 'vsock accept failed for lack of resources; pausing');
        this.#pause(null, RESOURCE_BACKOFF_MS);
      } else {
        this.#pause(err, FAILURE_BACKOFF_MS);
      }
      return;
    }
  }

  /** Stops accepting for a while (so a persistent error cannot spin the loop), then resumes. */
  #pause(err: Error | null, ms: number): void {
    this.#watch(false);
    clearTimeout(this.#backoff);
    this.#backoff = setTimeout(() => {
      this.#backoff = undefined;
      this.#watch(true);
    }, ms);
    if (!this.#refed) this.#backoff.unref();
    if (err) this.emit('error', err);
  }

  #deliver(handle: NativeHandle, remote: VsockAddress): void {
    let socket: VsockSocket;
    try {
      socket = new VsockSocket(handle, remote, { allowHalfOpen: this.#opts.allowHalfOpen ?? false });
    } catch (err) {
      handle.close();
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      return;
    }
    // Nobody would ever read or close it; do not leave the peer hanging.
    if (this.listenerCount('connection') === 0) {
      socket.destroy();
      return;
    }
    this.emit('connection', socket);
  }
}
