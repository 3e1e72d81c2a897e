import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { packageRoot } from '../paths.js';

/**
 * The project's one native addon (native/vsock), built at npm install: what
 * Node lacks here: AF_VSOCK sockets, non-blocking character devices,
 * mount(2), and close-on-exec for descriptors that other native modules open. Importers must not crash when it is missing; only calling it throws,
 * with the reason.
 */
export type AddonState<T> = { binding: T; path: string } | { reason: string; path: string | undefined };

const ADDON_RELATIVE_PATH = join('native', 'vsock', 'build', 'Release', 'vsock.node');
let state: AddonState<unknown> | undefined;

export function addonState<T>(): AddonState<T> {
  state ??= load();
  return state as AddonState<T>;
}

function load(): AddonState<unknown> {
  if (process.platform !== 'linux') return { reason: `the native addon is Linux-only (this is ${process.platform})`, path: undefined };
  const path = join(packageRoot(), ADDON_RELATIVE_PATH);
  if (!existsSync(path)) return { reason: `native addon not built (${path} is missing): run npm install (needs build-essential, python3)`, path };
  try {
    return { binding: createRequire(import.meta.url)(path), path };
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    return { reason: `native addon ${path} failed to load (${detail}): rebuild it with node native/build.mjs`, path };
  }
}

export function requireAddon<T>(what: string): T {
  const s = addonState<T>();
  if ('binding' in s) return s.binding;
  throw Object.assign(new Error(`${what} unavailable: ${s.reason}`), { code: 'ERR_VSOCK_UNAVAILABLE' });
}

interface FdBinding {
  setCloexec?: (fd: number) => number;
  cloexecFrom?: (minFd: number) => number;
}

function fdBinding(): FdBinding | undefined {
  const s = addonState<FdBinding>();
  return 'binding' in s ? s.binding : undefined;
}

/**
 * Mark every descriptor from `minFd` up close-on-exec, so a child started
 * next inherits only the stdio its spawn hands it. Returns how many were
 * not, or undefined when the addon (or this function in an old build) is missing.
 */
export function closeOnExecFrom(minFd = 3): number | undefined {
  const fn = fdBinding()?.cloexecFrom;
  if (!fn) return undefined;
  const r = fn(minFd);
  return r < 0 ? undefined : r;
}

/** Mark one descriptor close-on-exec; false when that was not possible. */
export function setCloseOnExec(fd: number): boolean {
  const fn = fdBinding()?.setCloexec;
  return fn ? fn(fd) >= 0 : false;
}

let errorMap: Map<number, [string, string]> | undefined;

/** [code, description] for a negative errno, as the addon returns them (Node builds the map anew per call, so keep one). */
export function errnoEntry(negErrno: number): [string, string] | undefined {
  errorMap ??= getSystemErrorMap();
  return errorMap.get(negErrno);
}

/** "WHAT: ECODE (description)" for a negative errno, with the code on the error. */
export function errnoError(negErrno: number, what: string): NodeJS.ErrnoException {
  const [code, text] = errnoEntry(negErrno) ?? [`E${-negErrno}`, 'unknown error'];
  return Object.assign(new Error(`${what}: ${code} (${text})`), { code, errno: negErrno });
}
