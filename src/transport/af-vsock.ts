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
import { childLogger, type Logger } from '../log.js';
import { constants as osConstants } from 'node:os';
import {
  abortError,
  checkU32,
  codedError,
  EAGAIN,
  errnoName,
  ETIMEDOUT,
  load,
  requireBinding,
  VMADDR_CID_ANY,
  vsockError,
  type Binding,
  type ConnectOptions,
  type NativeHandle,
  type VsockAddress,
  type VsockServerOptions,
} from './vsock-native.js';
import { VsockSocket } from './vsock-socket.js';

export {
  VMADDR_CID_ANY,
  VMADDR_CID_HOST,
  VMADDR_CID_LOCAL,
  VMADDR_PORT_ANY,
  vsockAddonPath,
  type ConnectOptions,
  type VsockAddress,
  type VsockError,
  type VsockServerOptions,
  type VsockSocketOptions,
} from './vsock-native.js';
export { createTestSocketPair, openCharDevice, VsockSocket } from './vsock-socket.js';

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
