import { listProcesses } from '../proc.js';

/** Live processes (other than this one) whose command line contains `needle`. */
export function processesMatching(needle: string): { pid: number; cmdline: string }[] {
  return listProcesses()
    .map((p) => ({ pid: p.pid, cmdline: p.argv.join(' ') }))
    .filter((p) => p.cmdline.includes(needle));
}
