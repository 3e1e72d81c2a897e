import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';

/**
 * The project's one native addon (native/vsock), built at npm install: what
 * Node lacks here: AF_VSOCK sockets, non-blocking character devices, and
 * mount(2). Importers must not crash when it is missing; only calling it throws,
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
