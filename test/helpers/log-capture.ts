import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from '../../src/log.js';

/** A pino logger whose lines a test can read back. */
export function captureLogger(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  const log = pino({ level: 'debug' }, sink);
  return { log, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}
