import { closeSync, constants, openSync } from 'node:fs';
import tty from 'node:tty';

import { denied, LIMITS, type ConsentDecision, type ConsentOutcome, type ConsentRequest } from './contract.js';
import { guestText } from '../guest-input.js';

/**
 * The consent question on the controlling terminal, for hosts without a display. It opens
 * /dev/tty itself rather than using stdin/stdout, which belong to the daemon and may be a pipe or
 * a journal. The terminal stays in line mode: an answer needs its key and Enter, so a stray
 * keystroke typed just before the prompt appeared cannot allow anything on its own.
 */

export const DEFAULT_TTY = '/dev/tty';
// Enough for a guest to explain itself, not enough to scroll the question off the screen.
const GUEST_TEXT_MAX_LINES = 12;

export interface TtyPromptOptions {
  ttyPath?: string;
  signal?: AbortSignal;
  /** Defaults to the request's own timeoutSeconds. */
  timeoutMs?: number;
}

/** True if this process has a terminal it can ask on. */
export function hasControllingTerminal(ttyPath = DEFAULT_TTY): boolean {
  try {
    closeSync(openSync(ttyPath, constants.O_RDWR | constants.O_NOCTTY));
    return true;
  } catch {
    return false;
  }
}

function choices(request: ConsentRequest): string {
  const always = request.allowAlways ? ', [a] always allow' : '';
  return `[d] deny, [o] allow once${always}`;
}

/** The whole question as plain text (no colours or cursor movement: nothing to spoof or break). */
export function renderTtyPrompt(request: ConsentRequest, timeoutSeconds = request.timeoutSeconds): string {
  const { vm } = request;
  const lines = ['', `=== Permission request from ${guestText(vm.label, { max: LIMITS.vmLabel })} (VM "${vm.name}") ===`, guestText(request.summary, { max: LIMITS.summary })];
  for (const d of request.details) lines.push(`  ${guestText(d.label, { max: LIMITS.detailLabel })}: ${guestText(d.value, { max: LIMITS.detailValue })}`);
  if (request.guestText.length > 0) {
    lines.push('Text from the VM (unverified):');
    for (const g of request.guestText) {
      lines.push(`  ${guestText(g.label, { max: LIMITS.guestLabel })}:`);
      const text = guestText(g.text, { max: LIMITS.guestText, multiline: true, maxLines: GUEST_TEXT_MAX_LINES });
      // The "|" gutter marks every guest line, so guest text cannot pass itself off as ours.
      for (const line of text.split('\n')) lines.push(`  | ${line}`);
    }
  }
  lines.push(`Answer ${choices(request)}. Enter denies; no answer denies in ${timeoutSeconds} s.`);
  return `${lines.join('\n')}\n> `;
}

/** A typed line as a decision; undefined means "not an answer, ask again". */
export function parseTtyAnswer(line: string, allowAlways: boolean): ConsentDecision | undefined {
  const word = line.trim().toLowerCase();
  if (word === '' || word === 'd' || word === 'deny') return 'deny';
  if (word === 'o' || word === 'once') return 'allow-once';
  if (allowAlways && (word === 'a' || word === 'always')) return 'allow-always';
  return undefined;
}

const VERDICT: Record<ConsentDecision, string> = {
  deny: 'Denied',
  'allow-once': 'Allowed once',
  'allow-always': 'Always allowed',
};

export function promptOnTerminal(request: ConsentRequest, opts: TtyPromptOptions = {}): Promise<ConsentOutcome> {
  if (opts.signal?.aborted) return Promise.resolve(denied('cancelled', 'tty'));
  const ttyPath = opts.ttyPath ?? DEFAULT_TTY;
  let readFd: number;
  let writeFd: number;
  try {
    // Two descriptions, one per stream, so that each stream closes only what it owns.
    readFd = openSync(ttyPath, constants.O_RDONLY | constants.O_NOCTTY);
  } catch (e) {
    return Promise.resolve(denied(`no terminal: ${(e as Error).message}`, 'tty'));
  }
  try {
    writeFd = openSync(ttyPath, constants.O_WRONLY | constants.O_NOCTTY);
  } catch (e) {
    closeSync(readFd);
    return Promise.resolve(denied(`no terminal: ${(e as Error).message}`, 'tty'));
  }
  if (!tty.isatty(readFd)) {
    closeSync(readFd);
    closeSync(writeFd);
    return Promise.resolve(denied(`${ttyPath} is not a terminal`, 'tty'));
  }

  const input = new tty.ReadStream(readFd);
  const output = new tty.WriteStream(writeFd);
  const timeoutMs = opts.timeoutMs ?? request.timeoutSeconds * 1000;

  return new Promise<ConsentOutcome>((resolve) => {
    let done = false;
    let pending = '';
    const finish = (decision: ConsentDecision, reason: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      input.removeAllListeners('data');
      input.destroy();
      const note = reason === 'user' ? '' : ` (${reason})`;
      output.end(`\n${VERDICT[decision]}${note}.\n`, () => resolve({ decision, reason, via: 'tty' }));
      output.on('error', () => resolve({ decision, reason, via: 'tty' }));
    };
    const onAbort = () => finish('deny', 'cancelled');
    const timer = setTimeout(() => finish('deny', 'timeout'), timeoutMs);
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    input.setEncoding('utf8');
    input.on('data', (chunk: string) => {
      pending += chunk;
      let nl: number;
      while (!done && (nl = pending.search(/[\r\n]/)) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        const decision = parseTtyAnswer(line, request.allowAlways);
        if (decision) finish(decision, 'user');
        else output.write(`Please answer ${choices(request)}.\n> `);
      }
      // A line longer than any answer is not an answer; drop it rather than buffer without end.
      if (pending.length > 256) pending = '';
    });
    // Ctrl-D on an empty line (or a hangup) ends the input: no answer, so deny.
    input.on('end', () => finish('deny', 'end of input'));
    input.on('error', (e) => finish('deny', `terminal error: ${e.message}`));

    output.write(renderTtyPrompt(request, Math.ceil(timeoutMs / 1000)));
  });
}
