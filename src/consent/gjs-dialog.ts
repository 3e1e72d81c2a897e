import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { requireProgram } from '../deps.js';
import { runProgram } from '../exec.js';
import { childLogger, type Logger } from '../log.js';
import { ConsentAnswer, denied, describeIssues, type ConsentOutcome, type ConsentRequest } from './contract.js';

/**
 * Node side of the GJS consent dialog: one child per question, the request on its stdin, exactly
 * one answer line on its stdout. Whatever goes wrong (no answer, two lines, a crash, a display
 * that vanished) ends as a deny that says why: a dialog that fails must never read as consent.
 */

/** Where the dialog draws. The daemon passes the user's session display, tests their Xvfb. */
export interface DialogDisplay {
  x11?: string;
  wayland?: string;
  xauthority?: string;
}

export interface ShowConsentDialogOptions {
  display: DialogDisplay;
  signal?: AbortSignal;
  /** Hard limit on the child; defaults to the dialog's own timeout plus a grace period. */
  timeoutMs?: number;
  /** Build output root holding `dialogs/consent/main.js`; defaults to this package's `dist/`. */
  distDir?: string;
  gjsPath?: string;
  /** Where the session variables (bus, locale, XDG dirs) are taken from; defaults to process.env. */
  baseEnv?: Record<string, string | undefined>;
  /** Set on top of everything else, e.g. GSK_RENDERER for a test. */
  env?: Record<string, string | undefined>;
  /** Extra dialog arguments; only tests use them (`--dump-widgets`). */
  dialogArgs?: readonly string[];
  /** Receives the dialog's stderr once it has exited; tests read the widget dump from it. */
  onStderr?: (stderr: string) => void;
  logger?: Logger;
}

/** Above the dialog's own timeout: the dialog is expected to answer "timeout" itself first. */
export const HARD_TIMEOUT_GRACE_MS = 3000;

// Only these reach the dialog: enough for GTK to find the session (bus for accessibility, locale,
// theme, icon dirs), nothing that could change which code GJS loads (GJS_PATH, LD_PRELOAD…).
const SESSION_VARIABLES = [
  'HOME',
  'USER',
  'XDG_RUNTIME_DIR',
  'XDG_DATA_DIRS',
  'XDG_CONFIG_HOME',
  'XDG_DATA_HOME',
  'XDG_CURRENT_DESKTOP',
  'DBUS_SESSION_BUS_ADDRESS',
  'LANG',
  'LANGUAGE',
  'LC_ALL',
  'LC_MESSAGES',
  'LC_CTYPE',
] as const;

export function defaultDistDir(): string {
  // Compiled: dist/src/consent/ → dist. From source (tests): src/consent/ → <repo>/dist.
  const up = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
  return path.basename(up) === 'dist' ? up : path.join(up, 'dist');
}

export function consentDialogScript(distDir = defaultDistDir()): string {
  return path.join(distDir, 'dialogs', 'consent', 'main.js');
}

function dialogEnvironment(opts: ShowConsentDialogOptions): Record<string, string | undefined> {
  const base = opts.baseEnv ?? process.env;
  const env: Record<string, string | undefined> = {};
  for (const name of SESSION_VARIABLES) env[name] = base[name];
  env.DISPLAY = opts.display.x11;
  env.WAYLAND_DISPLAY = opts.display.wayland;
  env.XAUTHORITY = opts.display.xauthority ?? (opts.display.x11 ? base.XAUTHORITY : undefined);
  return { ...env, ...opts.env };
}

/** Exactly one newline-terminated line, valid against the contract; anything else is a reason to deny. */
export function parseDialogAnswer(stdout: string): { answer: ConsentAnswer } | { problem: string } {
  const match = /^([^\n]*)\n$/.exec(stdout);
  if (!match?.[1]) {
    return { problem: stdout.length === 0 ? 'dialog gave no answer' : 'dialog answer was not exactly one line' };
  }
  let json: unknown;
  try {
    json = JSON.parse(match[1]);
  } catch {
    return { problem: 'dialog answer was not JSON' };
  }
  const parsed = ConsentAnswer.safeParse(json);
  if (!parsed.success) return { problem: `dialog answer invalid: ${describeIssues(parsed.error)}` };
  return { answer: parsed.data };
}

export async function showConsentDialog(request: ConsentRequest, opts: ShowConsentDialogOptions): Promise<ConsentOutcome> {
  const log = opts.logger ?? childLogger({ vm: request.vm.name, portal: 'consent' });
  if (opts.signal?.aborted) return denied('cancelled', 'gui');
  if (!opts.display.x11 && !opts.display.wayland) return denied('dialog failed: no display given', 'gui');

  let gjs: string;
  try {
    gjs = requireProgram('gjs', opts.gjsPath);
  } catch (e) {
    return denied(`dialog failed: ${(e as Error).message}`, 'gui');
  }
  const script = consentDialogScript(opts.distDir);
  if (!existsSync(script)) return denied(`dialog failed: ${script} is missing (build the dialogs first)`, 'gui');

  const hardMs = opts.timeoutMs ?? request.timeoutSeconds * 1000 + HARD_TIMEOUT_GRACE_MS;
  // Our own deadline rather than the exec timeout alone, so that afterwards "the caller cancelled"
  // and "the dialog hung" can be told apart without parsing an error message.
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), hardMs);
  const signal = opts.signal ? AbortSignal.any([opts.signal, deadline.signal]) : deadline.signal;

  log.debug({ script, hardMs }, 'showing consent dialog');
  try {
    const { stdout, stderr } = await runProgram(gjs, ['-m', script, ...(opts.dialogArgs ?? [])], {
      env: dialogEnvironment(opts),
      input: JSON.stringify(request),
      signal,
      // A backstop only: the deadline above fires first.
      timeoutMs: hardMs + 5000,
    });
    opts.onStderr?.(stderr);
    const parsed = parseDialogAnswer(stdout);
    if ('problem' in parsed) {
      log.warn({ stdout: stdout.slice(0, 200) }, parsed.problem);
      return denied(parsed.problem, 'gui');
    }
    return { decision: parsed.answer.decision, reason: parsed.answer.reason, via: 'gui' };
  } catch (e) {
    const stderr = (e as { stderr?: unknown }).stderr;
    if (typeof stderr === 'string') opts.onStderr?.(stderr);
    if (opts.signal?.aborted) return denied('cancelled', 'gui');
    if (deadline.signal.aborted) {
      log.warn({ hardMs }, 'consent dialog did not answer in time; killed');
      return denied(`dialog gave no answer within ${hardMs} ms`, 'gui');
    }
    log.warn({ err: e }, 'consent dialog failed');
    return denied(`dialog failed: ${(e as Error).message.split('\n')[0] ?? 'unknown error'}`, 'gui');
  } finally {
    clearTimeout(timer);
  }
}
