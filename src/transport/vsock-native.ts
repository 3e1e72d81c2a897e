/**
 * The native side of AF_VSOCK sockets and pollable character devices: the
 * addon's handle, the address and error types, and Node-style errno errors.
 * Shared by the socket stream (vsock-socket.ts) and the AF_VSOCK API
 * (af-vsock.ts).
 */
import { constants as osConstants } from 'node:os';
import { addonState, errnoEntry, requireAddon } from '../native/addon.js';

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
export interface NativeHandle {
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
export type SetupResult = NativeHandle | [number, string];

export interface Binding {
  READABLE: number;
  WRITABLE: number;
  probe(): number;
  localCid(): [number, string];
  listen(cid: number, port: number, backlog: number): SetupResult;
  connect(cid: number, port: number, timeoutMs: number): SetupResult;
  testPair(): [NativeHandle, NativeHandle] | [number, string];
  openDevice(path: string): NativeHandle | number;
}

export const requireBinding = (): Binding => requireAddon<Binding>('AF_VSOCK');
export const load = () => addonState<Binding>();

/** Where the addon is (or would be) loaded from; for diagnostics. */
export function vsockAddonPath(): string | undefined {
  return load().path;
}

// ---------------------------------------------------------------------------
// Errors

export const EAGAIN = -osConstants.errno.EAGAIN;
export const ENOTCONN = -osConstants.errno.ENOTCONN;
export const ENOTSOCK = -osConstants.errno.ENOTSOCK;
export const ETIMEDOUT = -osConstants.errno.ETIMEDOUT;

export { errnoEntry };

export function errnoName(negErrno: number): string {
  return errnoEntry(negErrno)?.[0] ?? `errno ${-negErrno}`;
}

export function vsockError(negErrno: number, syscall: string, addr?: VsockAddress, hint?: string): VsockError {
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

export function formatAddress(addr: VsockAddress): string {
  const show = (n: number): string => (n === VMADDR_CID_ANY ? 'any' : String(n));
  return `${show(addr.cid)}:${show(addr.port)}`;
}

export function codedError(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}

export function abortError(reason: unknown): Error {
  const err = codedError('ABORT_ERR', 'The operation was aborted');
  err.name = 'AbortError';
  if (reason !== undefined) (err as Error & { cause?: unknown }).cause = reason;
  return err;
}

export function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`${what} must be an integer in [0, 2^32-1], got ${value}`);
  }
}

