import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

/**
 * The package root (the folder with package.json), found by walking up from
 * this module so the same code works from `src/` under vitest and from `dist/`.
 */
export function packageRoot(): string {
  if (root) return root;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the xdg-desktop-portal-vm package root');
    dir = up;
  }
  return (root = dir);
}

/**
 * Node flags the CLI's own #! line passes. A 4 MiB young generation keeps the
 * daemon's memory flat under load (75 MiB instead of ~125 MiB with 32 busy
 * VMs) and is faster too; see README "Performance".
 */
export const NODE_FLAGS = ['--max-semi-space-size=4'];

/** The CLI as built by `npm run build`: the bundle users run (scripts/bundle.mjs says why). */
export function cliEntry(): string {
  return path.join(packageRoot(), 'dist', 'bundle', 'xdp-vm.mjs');
}

export function runtimeDir(): string {
  return process.env.XDG_RUNTIME_DIR ?? `/run/user/${process.getuid?.() ?? 0}`;
}

export function configHome(): string {
  return process.env.XDG_CONFIG_HOME ?? path.join(process.env.HOME ?? '/root', '.config');
}

export function stateHome(): string {
  return process.env.XDG_STATE_HOME ?? path.join(process.env.HOME ?? '/root', '.local', 'state');
}
