import { pino, type Logger as PinoLogger } from 'pino';
import { guestLogText } from './guest-input.js';

export type Logger = PinoLogger;

/** Our own bugs. SyntaxError and URIError are left out: they come from parsing input, and input may be a guest's. */
export function isProgrammingError(err: unknown): boolean {
  return err instanceof TypeError || err instanceof RangeError || err instanceof ReferenceError;
}

/** Where an error was thrown: the first frame of its stack, enough to find a bug, never the whole trace. */
export function thrownAt(err: Error): string | undefined {
  const frame = (err.stack ?? '').split('\n').find((l) => /^\s+at /.test(l));
  return frame === undefined ? undefined : guestLogText(frame.trim(), 300);
}

/**
 * How `{ err }` is logged, everywhere. An error's message may quote a guest
 * (a rejected option, a parser's snippet of its input), so it is cleaned and
 * capped like any guest text; a stack trace is noise at best for a guest's
 * mistake, so only our own bugs say where they were thrown.
 */
export function errForLog(err: unknown): unknown {
  if (!(err instanceof Error)) return typeof err === 'string' ? guestLogText(err, 1000) : err;
  const out: Record<string, unknown> = { type: guestLogText(err.name, 60), message: guestLogText(err.message, 1000) };
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' || typeof code === 'number') out.code = typeof code === 'string' ? guestLogText(code, 60) : code;
  if (isProgrammingError(err)) out.at = thrownAt(err);
  return out;
}

/**
 * One root logger per process. Everything else derives child loggers that carry
 * `vm`, `portal` and `request`, so a reader can filter one request end to end.
 * Logs go to stderr: stdout belongs to the CLI's human output.
 */
let root: Logger | undefined;

export function rootLogger(): Logger {
  root ??= pino(
    {
      name: 'xdp-vm',
      level: process.env.XDP_VM_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      serializers: { err: errForLog },
    },
    pino.destination({ fd: 2, sync: true }),
  );
  return root;
}

/** Replace the root logger, e.g. with one that writes to a test's buffer. */
export function setRootLogger(logger: Logger): void {
  root = logger;
}

export function childLogger(bindings: Record<string, unknown>): Logger {
  return rootLogger().child(bindings);
}
