import { readdirSync, readFileSync } from 'node:fs';

/** Live processes whose command line contains `needle`, read from /proc. */
export function processesMatching(needle: string): { pid: number; cmdline: string }[] {
  const out: { pid: number; cmdline: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ').trim();
      if (cmdline.includes(needle)) out.push({ pid: Number(entry), cmdline });
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}
