import { Duplex } from 'node:stream';
import {
  codedError,
  EAGAIN,
  ENOTCONN,
  ENOTSOCK,
  requireBinding,
  VMADDR_CID_ANY,
  VMADDR_PORT_ANY,
  vsockError,
  type NativeHandle,
  type VsockAddress,
  type VsockSocketOptions,
} from './vsock-native.js';

/**
 * A connected stream over a native handle: an AF_VSOCK socket, or a pollable
 * character device such as a virtio-serial port. The addon owns the fd and a
 * uv_poll_t, reports readiness and does the non-blocking syscalls; this turns
 * that into a Duplex with backpressure and Node-style errors.
 */

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

  /**
   * The kernel descriptor, for handing the connection to a kernel driver
   * that takes a socket's fd (USB/IP's vhci-hcd and usbip-host). It stays
   * this socket's: destroy() closes it, and the driver keeps its own
   * reference.
   */
  get fd(): number {
    const fd = this.#handle?.fd();
    if (fd === undefined || fd < 0) throw codedError('ERR_SOCKET_CLOSED', 'the vsock socket is closed');
    return fd;
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
