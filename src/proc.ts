import { readdirSync, readFileSync } from 'node:fs';

/** Live processes and their argv, read from /proc; never this process. */
export interface ProcessInfo {
  pid: number;
  argv: string[];
}

export function listProcesses(): ProcessInfo[] {
  const out: ProcessInfo[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (argv.at(-1) === '') argv.pop();
      out.push({ pid: Number(entry), argv });
    } catch {
      /* exited while we looked */
    }
  }
  return out;
}

/** Whether a process with this pid exists (and may be signalled by us). */
export function isAlive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
