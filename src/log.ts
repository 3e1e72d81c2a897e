import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

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
