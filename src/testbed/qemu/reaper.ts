import { existsSync, rmSync } from 'node:fs';
import type { Service } from '../../exec.js';

/**
 * Last lines of defence for the e2e tier, so one failing test cannot leave QEMU
 * guests burning CPU under the next run: children die with the test process
 * (parent-death signal, see diesWithParent), and whatever is still registered is
 * killed and removed on a normal exit. vitest ends its workers without running
 * exit handlers, so the parent-death signal is the one that counts there.
 */
const services = new Set<Service>();
const dirs = new Set<string>();

process.once('exit', () => {
  for (const service of services) {
    if (service.running && service.pid !== undefined) {
      try {
        process.kill(service.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

export function reapOnExit(service: Service): Service {
  services.add(service);
  void service.exited.then(() => services.delete(service));
  return service;
}

export function removeOnExit(dir: string): () => void {
  dirs.add(dir);
  return () => dirs.delete(dir);
}

const SETPRIV = '/usr/bin/setpriv';

/**
 * `file args` wrapped so the kernel SIGKILLs it when the test process dies, even by
 * SIGKILL, when no exit handler can run. The wrapper execs the program, so the
 * pid stays the program's. Without setpriv (util-linux) only the exit handler is left.
 */
export function diesWithParent(file: string, args: readonly string[]): [string, string[]] {
  if (!existsSync(SETPRIV)) return [file, [...args]];
  return [SETPRIV, ['--pdeathsig', 'KILL', '--', file, ...args]];
}

