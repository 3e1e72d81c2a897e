import { dependency, whichProgram } from '../deps.js';
import { childLogger, type Logger } from '../log.js';
import {
  ConsentRequest,
  denied,
  describeIssues,
  type ConsentOutcome,
  type ConsentRequestInput,
} from './contract.js';
import { showConsentDialog, type ShowConsentDialogOptions } from './gjs-dialog.js';
import { hasControllingTerminal, promptOnTerminal, type TtyPromptOptions } from './tty-prompt.js';

/**
 * The one entry point for asking the user: picks the dialog or the terminal, and makes sure a VM
 * can never stack up dialogs. A guest that fires ten requests gets one question at a time, so it
 * cannot bury the user under windows until one is clicked by accident.
 */

export type ConsentMode = 'auto' | 'gui' | 'tty';

export interface AskConsentOptions {
  mode?: ConsentMode;
  signal?: AbortSignal;
  /** Where DISPLAY, WAYLAND_DISPLAY and XAUTHORITY are read from; defaults to process.env. */
  env?: Record<string, string | undefined>;
  /** Passed through to the dialog (dist directory, gjs path, extra environment…). */
  dialog?: Omit<ShowConsentDialogOptions, 'display' | 'signal'>;
  tty?: Omit<TtyPromptOptions, 'signal'>;
  logger?: Logger;
  /** Seams for tests of the choice and the queueing; production code leaves them alone. */
  seams?: Partial<ConsentSeams>;
}

export interface ConsentSeams {
  showDialog: typeof showConsentDialog;
  promptTerminal: typeof promptOnTerminal;
  gjsInstalled: () => boolean;
  terminalPresent: () => boolean;
}

const realSeams: ConsentSeams = {
  showDialog: showConsentDialog,
  promptTerminal: promptOnTerminal,
  gjsInstalled: () => whichProgram(dependency('gjs').candidates) !== undefined,
  terminalPresent: () => hasControllingTerminal(),
};

export const NO_WAY_TO_ASK = 'no display and no terminal';

/** Serialises jobs per key; different keys run in parallel. */
class KeyedQueue {
  private readonly tails = new Map<string, Promise<void>>();

  run<T>(key: string, job: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(job);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }

  get busyKeys(): string[] {
    return [...this.tails.keys()];
  }
}

const perVm = new KeyedQueue();
// Every VM shares the one terminal, so terminal prompts are serialised across VMs too.
const terminal = new KeyedQueue();
const TERMINAL_KEY = 'tty';

/** VMs with a question showing or waiting; for diagnostics and tests. */
export function vmsBeingAsked(): string[] {
  return perVm.busyKeys;
}

type Route = { via: 'gui'; display: ShowConsentDialogOptions['display'] } | { via: 'tty' } | { via: 'none' };

function chooseRoute(mode: ConsentMode, env: Record<string, string | undefined>, seams: ConsentSeams): Route {
  const display = {
    x11: env.DISPLAY || undefined,
    wayland: env.WAYLAND_DISPLAY || undefined,
    xauthority: env.XAUTHORITY || undefined,
  };
  const hasDisplay = Boolean(display.x11 || display.wayland);
  if (mode === 'tty') return { via: 'tty' };
  if (mode === 'gui') return { via: 'gui', display };
  if (hasDisplay && seams.gjsInstalled()) return { via: 'gui', display };
  if (seams.terminalPresent()) return { via: 'tty' };
  return { via: 'none' };
}

function whenAborted(signal: AbortSignal): Promise<ConsentOutcome> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve(denied('cancelled', 'none'));
    else signal.addEventListener('abort', () => resolve(denied('cancelled', 'none')), { once: true });
  });
}

export async function askConsent(input: ConsentRequestInput, opts: AskConsentOptions = {}): Promise<ConsentOutcome> {
  const seams = { ...realSeams, ...opts.seams };
  const parsed = ConsentRequest.safeParse(input);
  const vmName = typeof input?.vm?.name === 'string' ? input.vm.name : '?';
  const log = opts.logger ?? childLogger({ vm: vmName, portal: 'consent' });
  if (!parsed.success) {
    // The host composed this request, so this is our bug; still, an unaskable question is a no.
    const reason = `invalid request: ${describeIssues(parsed.error)}`;
    log.error({ reason }, 'consent request rejected before asking');
    return denied(reason, 'none');
  }
  const request = parsed.data;

  const ask = async (): Promise<ConsentOutcome> => {
    if (opts.signal?.aborted) return denied('cancelled', 'none');
    const route = chooseRoute(opts.mode ?? 'auto', opts.env ?? process.env, seams);
    switch (route.via) {
      case 'gui':
        return seams.showDialog(request, { ...opts.dialog, display: route.display, signal: opts.signal, logger: log });
      case 'tty':
        return terminal.run(TERMINAL_KEY, () => seams.promptTerminal(request, { ...opts.tty, signal: opts.signal }));
      case 'none':
        return denied(NO_WAY_TO_ASK, 'none');
    }
  };

  const askSafely = () =>
    ask().catch((e: unknown) => {
      log.error({ err: e }, 'asking for consent failed');
      return denied(`internal error: ${e instanceof Error ? e.message : String(e)}`, 'none');
    });
  const queued = perVm.run(request.vm.name, askSafely);
  // A caller that gives up while still queued gets its answer now; its turn, when it comes, is a
  // no-op because `ask` checks the signal first.
  const outcome = await (opts.signal ? Promise.race([queued, whenAborted(opts.signal)]) : queued);
  log.info({ decision: outcome.decision, reason: outcome.reason, via: outcome.via }, 'consent decided');
  return outcome;
}
