import { execa, type ResultPromise } from 'execa';
import { once } from 'node:events';
import { closeOnExecFrom } from './native/addon.js';

/**
 * The one way this project runs another program: never through a shell, with an
 * environment the caller spells out, a timeout, cancellation, and the program's
 * stderr kept for the error message.
 */
export interface ExecOptions {
  env?: Record<string, string | undefined>;
  /** Inherit the current environment under `env`. Off by default: be explicit. */
  inheritEnv?: boolean;
  cwd?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
  input?: string | Buffer;
}

export class ExecError extends Error {
  constructor(
    readonly file: string,
    readonly args: readonly string[],
    readonly exitCode: number | undefined,
    readonly signal: string | undefined,
    readonly stderr: string,
    reason: string,
  ) {
    const tail = stderr.trim().split('\n').slice(-5).join('\n');
    super(`${file} ${reason}${tail ? `: ${tail}` : ''}`);
    this.name = 'ExecError';
  }
}

/**
 * A child inherits every descriptor not marked close-on-exec. Node marks its
 * own, native modules may not (dbus-next's usocket does not), and a child
 * such as virtiofsd, which outlives us, would keep our D-Bus connection and
 * with it our bus name. Marking them all right before the spawn, in the same
 * turn of the event loop, leaves the child only the stdio it is handed.
 */
function withoutInheritedDescriptors(): void {
  closeOnExecFrom(3);
}

const MINIMAL_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' };

function environment(opts: ExecOptions): Record<string, string> {
  const base = opts.inheritEnv ? { ...process.env } : { ...MINIMAL_ENV };
  const merged: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...base, ...opts.env })) if (v !== undefined) merged[k] = v;
  return merged;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/** Run a program to completion; reject with an ExecError that carries stderr. */
export async function runProgram(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<RunResult> {
  withoutInheritedDescriptors();
  const result = await execa(file, args, {
    env: environment(opts),
    extendEnv: false,
    cwd: opts.cwd,
    timeout: opts.timeoutMs ?? 30_000,
    cancelSignal: opts.signal,
    input: opts.input,
    reject: false,
    stripFinalNewline: false,
  });
  if (result.failed) {
    const reason = result.timedOut
      ? `timed out after ${opts.timeoutMs ?? 30_000} ms`
      : result.isCanceled
        ? 'was cancelled'
        : result.signal
          ? `was killed by ${result.signal}`
          : result.exitCode !== undefined
            ? `exited with status ${result.exitCode}`
            : `could not start (${result.originalMessage ?? result.shortMessage})`;
    throw new ExecError(file, args, result.exitCode, result.signal ?? undefined, String(result.stderr ?? ''), reason);
  }
  return { stdout: String(result.stdout), stderr: String(result.stderr) };
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ServiceOptions extends Omit<ExecOptions, 'timeoutMs' | 'input'> {
  /** Where the child's stderr goes: kept in memory (last 64 KiB) by default. */
  stdio?: 'pipe' | 'inherit' | 'ignore';
  onStderrLine?: (line: string) => void;
  onStdoutLine?: (line: string) => void;
  /**
   * With a line callback: a line longer than this (UTF-16 units) is dropped
   * whole, and no more than this plus one chunk is ever buffered, so a child
   * that floods one endless line cannot grow our memory. Unbounded by default.
   */
  maxLineLength?: number;
  /**
   * Let the child outlive us: its own session, not killed when we exit, and
   * its output appended to `logFile` (a pipe to us would break when we go).
   */
  outliveParent?: { logFile: string };
}

/** A long-running child (virtiofsd, dbus-daemon, a portal) and its exit. */
export class Service {
  readonly exited: Promise<Exit>;
  private exit: Exit | undefined;
  private stderrTail = '';

  constructor(
    readonly name: string,
    private readonly child: ResultPromise,
    opts: ServiceOptions,
  ) {
    const lines = (stream: NodeJS.ReadableStream | null, cb?: (l: string) => void, keep = false) => {
      if (!stream) return;
      let buf = '';
      /** Inside a line already over maxLineLength: drop up to its newline. */
      let skipping = false;
      const max = opts.maxLineLength ?? Infinity;
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        if (keep) this.stderrTail = (this.stderrTail + chunk).slice(-65536);
        if (!cb) return;
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          if (!skipping && nl <= max) cb(buf.slice(0, nl));
          skipping = false;
          buf = buf.slice(nl + 1);
        }
        if (buf.length > max) {
          buf = '';
          skipping = true;
        }
      });
    };
    lines(child.stderr, opts.onStderrLine, true);
    lines(child.stdout, opts.onStdoutLine);
    this.exited = once(child, 'exit').then(([code, signal]) => {
      this.exit = { code: code as number | null, signal: signal as NodeJS.Signals | null };
      return this.exit;
    });
    // The promise rejects on non-zero exit; exits are reported through `exited`.
    child.catch(() => undefined);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  get stderr(): string {
    return this.stderrTail;
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.running) this.child.kill(signal);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs = 3000): Promise<Exit> {
    if (!this.running) return this.exit!;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

export function startService(name: string, file: string, args: readonly string[], opts: ServiceOptions = {}): Service {
  const stdio = opts.stdio ?? 'pipe';
  const out = opts.outliveParent ? { file: opts.outliveParent.logFile, append: true } : stdio;
  withoutInheritedDescriptors();
  const child = execa(file, args, {
    env: environment(opts),
    extendEnv: false,
    cwd: opts.cwd,
    cancelSignal: opts.signal,
    stdin: 'ignore',
    stdout: out,
    stderr: out,
    reject: false,
    buffer: false,
    ...(opts.outliveParent ? { detached: true, cleanup: false } : {}),
  });
  if (opts.outliveParent) child.unref();
  return new Service(name, child, opts);
}
