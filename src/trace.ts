import type { Logger } from './log.js';

/**
 * Hop marks: a debug line with a wall-clock time in fractional milliseconds
 * that is comparable across processes on one machine. `npm run demo` and the
 * bench's breakdown read them to say where a request's time went.
 */
export function now(): number {
  return performance.timeOrigin + performance.now();
}

export function hop(log: Logger, name: string, extra: Record<string, unknown> = {}): void {
  if (log.isLevelEnabled('debug')) log.debug({ hop: name, at: now(), ...extra }, `hop ${name}`);
}
