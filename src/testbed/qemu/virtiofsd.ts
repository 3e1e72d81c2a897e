import { statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { requireProgram } from '../../deps.js';
import { startService, type Service } from '../../exec.js';
import { diesWithParent, reapOnExit } from './reaper.js';

export interface VirtiofsdOptions {
  /** Shown in errors and logs. */
  name: string;
  socketPath: string;
  sourceDir: string;
  cache?: 'none' | 'auto' | 'always';
  /** How long to wait for the socket; default 5 s. */
  timeoutMs?: number;
}

/** Start virtiofsd on `sourceDir` and resolve once its vhost-user socket is listening. */
export async function startVirtiofsd(opts: VirtiofsdOptions): Promise<Service> {
  const virtiofsd = requireProgram('virtiofsd');
  const args = [`--socket-path=${opts.socketPath}`, '-o', `source=${opts.sourceDir}`, '-o', `cache=${opts.cache ?? 'auto'}`];
  const service = reapOnExit(startService(opts.name, ...diesWithParent(virtiofsd, args)));
  await waitForSocket(opts.socketPath, service, opts.timeoutMs ?? 5000);
  return service;
}

export interface RootShareOptions {
  socketPath: string;
  /** An empty directory; the read-only view of `/` is mounted here. */
  mountPoint: string;
  /** A directory to show in that view even if it is on another filesystem (the checkout the guest runs). */
  alsoShow?: string;
  timeoutMs?: number;
}

// The constant script gets its values as positional parameters, never spliced in.
const ROOT_SHARE_SCRIPT =
  'mount --bind / "$1" && mount -o remount,bind,ro "$1" && ' +
  '{ [ -z "$4" ] || { mount --bind "$4" "$1$4" && mount -o remount,bind,ro "$1$4"; }; } && ' +
  'exec "$2" "--socket-path=$3" -o "source=$1" -o cache=always';

/**
 * Export the host's `/` read-only. virtiofsd 7.2 has no read-only flag, so it serves
 * a read-only, non-recursive bind mount of `/` (so no host /proc, /sys or /dev).
 * The mount is made inside a private mount namespace that only virtiofsd lives
 * in: it disappears with virtiofsd, even if the test process is killed.
 */
export async function startRootShare(opts: RootShareOptions): Promise<Service> {
  const virtiofsd = requireProgram('virtiofsd');
  const args = ['--mount', '--propagation', 'private', '--', '/bin/sh', '-c', ROOT_SHARE_SCRIPT, 'xdpvm-root-share'];
  args.push(opts.mountPoint, virtiofsd, opts.socketPath, opts.alsoShow ?? '');
  // unshare without --fork execs in place, so the parent-death signal reaches virtiofsd.
  const service = reapOnExit(startService('virtiofsd-root', ...diesWithParent('/usr/bin/unshare', args)));
  await waitForSocket(opts.socketPath, service, opts.timeoutMs ?? 5000);
  return service;
}

export async function waitForSocket(path: string, service: Service, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (isSocket(path)) return;
    if (!service.running) throw new Error(`${service.name} exited before creating ${path}: ${service.stderr.trim().slice(-2000)}`);
    if (Date.now() > deadline) {
      await service.stop();
      throw new Error(`${service.name} did not create ${path} within ${timeoutMs} ms: ${service.stderr.trim().slice(-2000)}`);
    }
    await sleep(5);
  }
}

function isSocket(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}
