import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { whichProgram } from '../deps.js';
import { runProgram } from '../exec.js';
import { auditFilePath, parseAuditLines, type AuditLine } from '../host/audit.js';
import { UsageError, parse, type Verb } from './common.js';

const usage = `Usage: xdp-vm log [--vm VM] [--since TIME] [--json] [--source auto|file|journal]

Print the audit trail, oldest first: every decision, grant and revoke.

  --vm VM        only the lines of VM
  --since TIME   only lines from TIME on: an ISO date or time
                 (2025-06-01, 2025-06-01T09:30, 09:30 for today), or how
                 long ago: 30s, 10m, 2h, 1d, 1w
  --json         the lines as a JSON array, as the daemon wrote them
  --source SRC   file: ${auditFilePath()}
                       (written when the daemon runs outside systemd)
                 journal: the user journal (the daemon under systemd)
                 auto (default): the file if it exists, else the journal`;

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** `--since`: "10m", "2h", "1d" ago, "09:30" today, or anything ISO-8601 that Date parses. */
export function parseSince(text: string, now: Date = new Date()): Date {
  const t = text.trim();
  const rel = /^(\d{1,6})\s*([smhdw])$/.exec(t);
  if (rel) return new Date(now.getTime() - Number(rel[1]) * UNITS[rel[2]!]!);
  const clock = /^(\d{1,2}):(\d{2})(?::(\d{2}))?$/.exec(t);
  if (clock && Number(clock[1]) < 24 && Number(clock[2]) < 60 && Number(clock[3] ?? 0) < 60) {
    const d = new Date(now);
    d.setHours(Number(clock[1]), Number(clock[2]), Number(clock[3] ?? 0), 0);
    return d;
  }
  if (/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(t)) {
    const ms = Date.parse(t.replace(' ', 'T'));
    if (!Number.isNaN(ms)) return new Date(ms);
  }
  throw new UsageError(`--since "${text}" is not a time: use an ISO date or time (2025-06-01, 2025-06-01T09:30, 09:30) or how long ago (30s, 10m, 2h, 1d, 1w)`);
}

const pad = (n: number) => String(n).padStart(2, '0');

function clockOf(d: Date, now: Date): string {
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

function whatOf(line: AuditLine): string {
  if (line.flood) return line.flood.phase === 'start' ? 'burst started' : `burst over, ${line.flood.refused} refused`;
  if (line.rule) return `by rule "${line.rule}"`;
  const paths = line.asked?.paths;
  if (Array.isArray(paths) && paths.length) return paths.map((p) => path.basename(String(p))).join(', ');
  const title = line.asked?.title;
  return typeof title === 'string' && title ? `"${title}"` : '';
}

/** One line for humans: "12:03:04 work FileChooser allow (user) q3.pdf → grant 1a2b3c". */
export function formatLine(line: AuditLine, now: Date = new Date()): string {
  const parts = [clockOf(new Date(line.time), now), line.vm, line.portal, `${line.decision} (${line.reason})`];
  const what = whatOf(line);
  if (what) parts.push(what);
  if (line.grant?.length) parts.push(`${line.decision === 'allow' ? '→ ' : ''}grant ${line.grant.join(', ')}`);
  return parts.join(' ');
}

function journalctl(): string {
  const found = whichProgram(['/usr/bin/journalctl', '/bin/journalctl', 'journalctl']);
  if (!found) throw new UsageError('journalctl is not installed (sudo apt-get install systemd); read the file with --source file');
  return found;
}

/** The daemon's stderr lines as the journal kept them; best effort, as MESSAGE may be anything. */
async function readJournal(since: Date | undefined): Promise<AuditLine[]> {
  const args = ['--user', '-o', 'json', '--no-pager', ...(since ? ['--since', `@${Math.floor(since.getTime() / 1000)}`] : [])];
  const { stdout } = await runProgram(journalctl(), args, { inheritEnv: true, timeoutMs: 60_000 });
  const messages: string[] = [];
  for (const raw of stdout.split('\n')) {
    if (!raw.includes('audit')) continue;
    try {
      const m = (JSON.parse(raw) as { MESSAGE?: unknown }).MESSAGE;
      if (typeof m === 'string') messages.push(m);
    } catch {
      /* not a journal entry */
    }
  }
  return parseAuditLines(messages);
}

async function readSource(source: string, since: Date | undefined): Promise<AuditLine[] | undefined> {
  const file = auditFilePath();
  if (existsSync(file) && source !== 'journal') return parseAuditLines(readFileSync(file, 'utf8').split('\n'));
  if (source === 'journal') return readJournal(since);
  if (source === 'file') return undefined;
  // auto without a file: the daemon may run under systemd; a journal we cannot read means no log.
  return readJournal(since).catch(() => undefined);
}

export const logVerb: Verb = {
  name: 'log',
  usage,
  async run(argv) {
    const { values, positionals } = parse(argv, { vm: { type: 'string' }, since: { type: 'string' }, json: { type: 'boolean' }, source: { type: 'string', default: 'auto' } }, usage);
    if (values.help) return console.log(usage), 0;
    if (positionals.length) throw new UsageError(`log takes no arguments\n\n${usage}`);
    const source = values.source as string;
    if (!['auto', 'file', 'journal'].includes(source)) throw new UsageError(`unknown --source "${source}"; choose auto, file or journal`);
    const since = values.since === undefined ? undefined : parseSince(values.since);
    const all = await readSource(source, since);
    if (!all) return console.log(`No audit log yet: ${auditFilePath()} does not exist.`), 0;
    const lines = all.filter((l) => (!values.vm || l.vm === values.vm) && (!since || Date.parse(l.time) >= since.getTime()));
    if (values.json) console.log(JSON.stringify(lines, null, 2));
    else if (lines.length === 0) console.log('No audit lines match.');
    else for (const l of lines) console.log(formatLine(l));
    return 0;
  },
};
