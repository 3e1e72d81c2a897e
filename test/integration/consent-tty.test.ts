import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { consentRequest } from '../helpers/consent-request.js';

import type { ConsentOutcome, ConsentRequestInput } from '../../src/consent/contract.js';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';

/**
 * The terminal prompt on a real pseudo-terminal: the prompt opens /dev/tty itself, so it has to be
 * the controlling terminal of the process, which only a pty driver can arrange. python3's pty
 * module is that driver; it waits for text and types, like a user would.
 */

const repo = fileURLToPath(new URL('../..', import.meta.url));

// Runs a command as the session leader of a new pty, types each step's text once the step's
// marker has appeared (after the previous marker), and reports the transcript and exit code.
const PTY_DRIVER = `
import json, os, pty, select, signal, sys, time
spec = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execve(spec["argv"][0], spec["argv"], spec["env"])
buf, seen, alive = b"", 0, True
deadline = time.monotonic() + spec["timeout"]
def pump(wait):
    global buf, alive
    if select.select([fd], [], [], wait)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if data:
            buf += data
        else:
            alive = False
for step in spec["steps"]:
    needle = step["waitFor"].encode()
    while alive and needle not in buf[seen:] and time.monotonic() < deadline:
        pump(0.05)
    if needle not in buf[seen:]:
        break
    seen = buf.index(needle, seen) + len(needle)
    os.write(fd, step["send"].encode())
while alive and time.monotonic() < deadline:
    pump(0.1)
if alive:
    os.kill(pid, signal.SIGKILL)
status = os.waitpid(pid, 0)[1]
sys.stdout.write(json.dumps({"transcript": buf.decode("utf-8", "replace"), "exitCode": os.waitstatus_to_exitcode(status), "killed": alive}))
`;

// The prompt as the daemon would call it, bundled so a plain `node` can run it inside the pty.
const RUNNER = `
import { writeFileSync } from 'node:fs';
import { ConsentRequest } from './contract.ts';
import { promptOnTerminal } from './tty-prompt.ts';
const [request, resultFile, timeoutMs] = process.argv.slice(2);
const outcome = await promptOnTerminal(ConsentRequest.parse(JSON.parse(request)), { timeoutMs: Number(timeoutMs) });
writeFileSync(resultFile, JSON.stringify(outcome));
`;

const PROMPT_END = 'no answer denies in';
let python = '';
let scratch = '';
let runner = '';
let runs = 0;

function request(overrides: Partial<ConsentRequestInput> = {}): ConsentRequestInput {
  return consentRequest({ guestText: [{ label: 'Reason given by the VM', text: 'I need it to log in' }], ...overrides });
}

interface PtyRun {
  outcome: ConsentOutcome;
  transcript: string;
}

async function promptInPty(req: ConsentRequestInput, steps: { waitFor: string; send: string }[], timeoutMs = 20_000): Promise<PtyRun> {
  const resultFile = path.join(scratch, `result-${++runs}.json`);
  const spec = {
    argv: [process.execPath, runner, JSON.stringify(req), resultFile, String(timeoutMs)],
    env: { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8' },
    steps,
    timeout: timeoutMs / 1000 + 10,
  };
  const { stdout } = await runProgram(python, ['-c', PTY_DRIVER, JSON.stringify(spec)], { timeoutMs: timeoutMs + 20_000 });
  const report = JSON.parse(stdout) as { transcript: string; exitCode: number; killed: boolean };
  if (report.killed || report.exitCode !== 0) {
    throw new Error(`prompt did not finish cleanly (exit ${report.exitCode}); transcript:\n${report.transcript}`);
  }
  return { outcome: JSON.parse(readFileSync(resultFile, 'utf8')) as ConsentOutcome, transcript: report.transcript.replace(/\r/g, '') };
}

beforeAll(async () => {
  python = requireProgram('python3');
  scratch = mkdtempSync(path.join(os.tmpdir(), 'xdp-vm-consent-tty-'));
  runner = path.join(scratch, 'runner.mjs');
  await build({
    stdin: { contents: RUNNER, resolveDir: path.join(repo, 'src', 'consent'), loader: 'ts', sourcefile: 'runner.ts' },
    outfile: runner,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'warning',
  });
}, 60_000);

afterAll(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('terminal consent prompt on a real pty', () => {
  it('"o" allows once, after re-asking on a line that is not an answer', async () => {
    const run = await promptInPty(request(), [
      { waitFor: PROMPT_END, send: 'make all\r' },
      { waitFor: 'Please answer', send: 'o\r' },
    ]);
    expect(run.outcome).toEqual({ decision: 'allow-once', reason: 'user', via: 'tty' });
    expect(run.transcript).toContain('=== Permission request from Work (VM "work") ===');
    expect(run.transcript).toContain('[d] deny, [o] allow once, [a] always allow');
    expect(run.transcript).toContain('Allowed once.');
  });

  it('"a" always allows, when the request offers it', async () => {
    const run = await promptInPty(request(), [{ waitFor: PROMPT_END, send: 'a\r' }]);
    expect(run.outcome).toEqual({ decision: 'allow-always', reason: 'user', via: 'tty' });
  });

  it('Enter alone denies', async () => {
    const run = await promptInPty(request(), [{ waitFor: PROMPT_END, send: '\r' }]);
    expect(run.outcome).toEqual({ decision: 'deny', reason: 'user', via: 'tty' });
    expect(run.transcript).toContain('Denied.');
  });

  it('end of input (Ctrl-D) denies', async () => {
    const run = await promptInPty(request(), [{ waitFor: PROMPT_END, send: '\u0004' }]);
    expect(run.outcome).toEqual({ decision: 'deny', reason: 'end of input', via: 'tty' });
  });

  it('no answer denies with reason "timeout"', async () => {
    const started = Date.now();
    const run = await promptInPty(request(), [], 1500);
    expect(run.outcome).toEqual({ decision: 'deny', reason: 'timeout', via: 'tty' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
    expect(run.transcript).toContain('Denied (timeout).');
  });

  it('ANSI and OSC escapes in guest text are shown neutralised, never sent to the terminal', async () => {
    const hostile = 'please\u001b[2J\u001b[H\u001b[31mAllowed once.\u001b[0m\u001b]0;owned\u0007\rtail\u202e';
    const run = await promptInPty(request({ guestText: [{ label: 'Reason given by the VM', text: hostile }] }), [
      { waitFor: PROMPT_END, send: '\r' },
    ]);
    expect(run.outcome.decision).toBe('deny');
    expect(run.transcript).toContain('Text from the VM (unverified):');
    // A lone CR, which would return the cursor and overwrite the line, starts a new gutter line instead.
    expect(run.transcript).toContain('  | please\\x1b[2J\\x1b[H\\x1b[31mAllowed once.\\x1b[0m\\x1b]0;owned\\x07\n  | tail\\u{202e}');
    // Not one raw control character reached the terminal apart from line ends (and the echoed Enter).
    expect(run.transcript).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
  });
});
