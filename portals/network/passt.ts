import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import type { PortForward } from '../../src/config/schema.js';
import { requireProgram } from '../../src/deps.js';
import type { Logger } from '../../src/log.js';

/**
 * One passt per (VM, user network): the user-mode network a VM's NIC talks
 * to, run as the user (passt needs no privilege; run as root it would drop
 * to nobody). QEMU connects to its Unix socket with a `stream` netdev.
 *
 * - `--one-off`: passt quits when its one client closes the socket, so it
 *   ends with the VM or with netdev_del, whoever goes first; nobody has to
 *   remember to stop it when a VM is killed.
 * - `--foreground`: it stays the process we started, so its pid is ours.
 *   It is detached from the daemon all the same: a daemon restart leaves the
 *   VM's network up, and the new daemon finds passt by its pid file.
 * - Forwards bind 127.0.0.1 only; UDP is not forwarded (`-u none`: passt
 *   would otherwise mirror each TCP forward for UDP).
 */
export interface PasstFiles {
  socket: string;
  pidFile: string;
  logFile: string;
  /** Its stderr: what it says before its log file is open (a port in use, no usable host interface). */
  errFile: string;
}

export function passtFiles(runtimeDir: string, logDir: string, vm: string, network: string): PasstFiles {
  const base = `${vm}-net-${network}`;
  return {
    socket: path.join(runtimeDir, `${base}.sock`),
    pidFile: path.join(runtimeDir, `${base}.pid`),
    logFile: path.join(logDir, `passt-${base}.log`),
    errFile: path.join(logDir, `passt-${base}.stderr`),
  };
}

export function passtArgs(files: PasstFiles, forwards: readonly PortForward[]): string[] {
  const tcp = forwards.length ? forwards.flatMap((f) => ['-t', `127.0.0.1/${f.host}:${f.guest}`]) : ['-t', 'none'];
  return ['--foreground', '--one-off', '--socket', files.socket, '--pid', files.pidFile, '--log-file', files.logFile, '--log-size', String(1 << 20), ...tcp, '-u', 'none'];
}

const READY_MS = 10_000;

export interface PasstHandle {
  pid: number;
  socket: string;
}

/** The passt serving `files.socket`, if one runs: by its pid file, checked against its command line. */
export function findPasst(files: PasstFiles): PasstHandle | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(files.pidFile, 'utf8').trim());
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 1) return undefined;
  try {
    // A recycled pid belongs to someone else: it must be a passt on this very socket.
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (!/passt/.test(path.basename(argv[0] ?? '')) || !argv.includes(files.socket)) return undefined;
  } catch {
    return undefined;
  }
  return { pid, socket: files.socket };
}

/** Start passt and wait until it listens; throws with passt's own words when it will not. */
export async function startPasst(files: PasstFiles, forwards: readonly PortForward[], log: Logger): Promise<PasstHandle> {
  const binary = requireProgram('passt');
  for (const dir of new Set([path.dirname(files.socket), path.dirname(files.logFile)])) mkdirSync(dir, { recursive: true, mode: 0o700 });
  // An earlier passt on this socket waits for a VM that is not coming back: it goes.
  const stale = findPasst(files);
  if (stale) await stopPasst(stale, log);
  rmSync(files.socket, { force: true });
  rmSync(files.pidFile, { force: true });
  const errFd = openSync(files.errFile, 'w', 0o600);
  const args = passtArgs(files, forwards);
  const child = spawn(binary, args, { detached: true, stdio: ['ignore', 'ignore', errFd] });
  closeSync(errFd);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const deadline = Date.now() + READY_MS;
  try {
    for (;;) {
      const outcome = await Promise.race([exited.then((code) => ({ code })), spawnError.then((err) => ({ err })), sleep(25).then(() => undefined)]);
      if (outcome && 'err' in outcome) throw new Error(`could not run ${binary}: ${outcome.err.message}`);
      if (outcome) throw new Error(`passt exited (status ${outcome.code}) before it listened: ${lastWords(files.errFile)}`);
      // passt writes its pid file once it is set up, socket bound.
      if (existsSync(files.pidFile) && existsSync(files.socket) && readFileSync(files.pidFile, 'utf8').trim() !== '') break;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`passt did not listen on ${files.socket} within ${READY_MS} ms`);
      }
    }
  } catch (err) {
    rmSync(files.pidFile, { force: true });
    throw err;
  }
  child.unref();
  log.info({ pid: child.pid, socket: files.socket, args }, 'passt started');
  return { pid: child.pid!, socket: files.socket };
}

/** Stop it (it may have gone with its VM already) and wait until it has. */
export async function stopPasst(handle: PasstHandle, log: Logger): Promise<void> {
  if (!alive(handle)) return;
  try {
    process.kill(handle.pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 80 && alive(handle); i++) await sleep(25);
  if (alive(handle)) {
    log.warn({ pid: handle.pid }, 'passt ignored SIGTERM; killing it');
    try {
      process.kill(handle.pid, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
  }
  log.info({ pid: handle.pid, socket: handle.socket }, 'passt stopped');
}

/** Alive, and still the passt on that socket (not a recycled pid). Zombies of ours count as gone. */
export function alive(handle: PasstHandle): boolean {
  try {
    const stat = readFileSync(`/proc/${handle.pid}/stat`, 'utf8');
    if (/^\d+ \(.*\) Z /.test(stat)) return false;
    return readFileSync(`/proc/${handle.pid}/cmdline`, 'utf8').split('\0').includes(handle.socket);
  } catch {
    return false;
  }
}

function lastWords(file: string): string {
  try {
    const lines = readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !/syslog/.test(l));
    return lines.slice(-3).join('; ').slice(0, 300) || 'it said nothing';
  } catch {
    return 'it said nothing';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
