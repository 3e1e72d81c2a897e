/** Summary statistics for timing samples, in milliseconds. */
export interface Summary {
  n: number;
  p50: number;
  p99: number;
  min: number;
  max: number;
}

export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  return { n: s.length, p50: quantile(s, 0.5), p99: quantile(s, 0.99), min: s[0] ?? NaN, max: s.at(-1) ?? NaN };
}

/** `between`, if given, runs untimed before each call (a pause, say). */
export async function timeEach(n: number, fn: (i: number) => Promise<void>, warmup = Math.min(20, n), between?: () => Promise<unknown> | undefined): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn(-1 - i);
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    await between?.();
    const t0 = process.hrtime.bigint();
    await fn(i);
    samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return samples;
}

export const fmt = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));

/** The bench sends hundreds of requests a minute, which flood control would rightly refuse. */
export const BENCH_CONFIG = { flood: { maxPending: 64, maxRecent: 100_000, windowSeconds: 60 } };
