import fs from 'node:fs';

/**
 * Preloaded into a process with `--import dist/bench/write-timer.js`
 * (bench/profile-forwarded.ts with BENCH_PROFILE_WRITES=1): times every
 * fs.writeSync, which is how pino's synchronous destinations write each log
 * and audit line, per descriptor, and prints one `WRITESYNC {json}` line to
 * stderr at exit. Changes nothing else.
 */
const original = fs.writeSync;
const byFd = new Map<number, number[]>();

(fs as { writeSync: typeof fs.writeSync }).writeSync = function timedWriteSync(this: unknown, fd: number, ...rest: unknown[]): number {
  const t0 = process.hrtime.bigint();
  try {
    return (original as (...a: unknown[]) => number).call(this, fd, ...rest);
  } finally {
    const us = Number(process.hrtime.bigint() - t0) / 1000;
    let s = byFd.get(fd);
    if (!s) byFd.set(fd, (s = []));
    s.push(us);
  }
} as typeof fs.writeSync;

process.on('exit', () => {
  const out: Record<string, { n: number; p50: number; p99: number; meanUs: number }> = {};
  for (const [fd, s] of byFd) {
    s.sort((a, b) => a - b);
    out[String(fd)] = { n: s.length, p50: s[s.length >> 1]!, p99: s[Math.min(s.length - 1, Math.floor(s.length * 0.99))]!, meanUs: s.reduce((a, b) => a + b, 0) / s.length };
  }
  original(2, `WRITESYNC ${JSON.stringify(out)}\n`);
});
