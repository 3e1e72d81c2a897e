import { pino } from 'pino';
import { describe, expect, it } from 'vitest';

import { askConsent, NO_WAY_TO_ASK, vmsBeingAsked, type ConsentSeams } from './ask.js';
import type { ConsentOutcome, ConsentRequest, ConsentRequestInput } from './contract.js';

const quiet = pino({ level: 'silent' });

function request(vm: string): ConsentRequestInput {
  return {
    version: 1,
    vm: { name: vm, label: vm.toUpperCase(), color: '#3465a4' },
    summary: `${vm} wants a USB device`,
    timeoutSeconds: 30,
  };
}

/** A fake dialog that stays up until the test answers it, recording what is showing. */
function controlledDialogs() {
  const showing: { vm: string; answer: (o: ConsentOutcome) => void }[] = [];
  const shown: string[] = [];
  const showDialog: ConsentSeams['showDialog'] = (req: ConsentRequest) =>
    new Promise((resolve) => {
      shown.push(req.vm.name);
      showing.push({ vm: req.vm.name, answer: resolve });
    });
  const answer = (vm: string, decision: ConsentOutcome['decision']) => {
    const i = showing.findIndex((s) => s.vm === vm);
    const [entry] = showing.splice(i, 1);
    entry?.answer({ decision, reason: 'user', via: 'gui' });
  };
  return { showing, shown, showDialog, answer };
}

const tick = () => new Promise((r) => setTimeout(r, 10));
const gui = { DISPLAY: ':0' };

describe('askConsent', () => {
  it('shows one dialog per VM at a time; a second request from that VM waits for the first', async () => {
    const d = controlledDialogs();
    const seams = { showDialog: d.showDialog, gjsInstalled: () => true };
    const first = askConsent(request('work'), { env: gui, seams, logger: quiet });
    const second = askConsent(request('work'), { env: gui, seams, logger: quiet });
    await tick();
    expect(d.showing.map((s) => s.vm)).toEqual(['work']);
    d.answer('work', 'allow-once');
    expect(await first).toMatchObject({ decision: 'allow-once' });
    await tick();
    expect(d.showing.map((s) => s.vm)).toEqual(['work']);
    d.answer('work', 'deny');
    expect(await second).toMatchObject({ decision: 'deny' });
    expect(d.shown).toEqual(['work', 'work']);
    expect(vmsBeingAsked()).toEqual([]);
  });

  it("lets another VM's dialog show in parallel", async () => {
    const d = controlledDialogs();
    const seams = { showDialog: d.showDialog, gjsInstalled: () => true };
    const work = askConsent(request('work'), { env: gui, seams, logger: quiet });
    const shopping = askConsent(request('shopping'), { env: gui, seams, logger: quiet });
    await tick();
    expect(d.showing.map((s) => s.vm).sort()).toEqual(['shopping', 'work']);
    d.answer('shopping', 'deny');
    d.answer('work', 'deny');
    await Promise.all([work, shopping]);
  });

  it('a queued request whose caller gives up is denied at once and never shown', async () => {
    const d = controlledDialogs();
    const seams = { showDialog: d.showDialog, gjsInstalled: () => true };
    const first = askConsent(request('work'), { env: gui, seams, logger: quiet });
    const abort = new AbortController();
    const second = askConsent(request('work'), { env: gui, seams, logger: quiet, signal: abort.signal });
    await tick();
    abort.abort();
    expect(await second).toEqual({ decision: 'deny', reason: 'cancelled', via: 'none' });
    d.answer('work', 'allow-once');
    await first;
    await tick();
    expect(d.shown).toEqual(['work']);
  });

  it('picks the dialog with a display and gjs, the terminal without, and denies with neither', async () => {
    const via = (o: ConsentOutcome) => o.via;
    const gui: ConsentSeams['showDialog'] = async () => ({ decision: 'allow-once', reason: 'user', via: 'gui' });
    const tty: ConsentSeams['promptTerminal'] = async () => ({ decision: 'allow-once', reason: 'user', via: 'tty' });
    const seams = (gjs: boolean, terminal: boolean): Partial<ConsentSeams> => ({
      showDialog: gui,
      promptTerminal: tty,
      gjsInstalled: () => gjs,
      terminalPresent: () => terminal,
    });
    const ask = (env: Record<string, string>, s: Partial<ConsentSeams>, mode?: 'tty') =>
      askConsent(request('work'), { env, seams: s, mode, logger: quiet });
    expect(via(await ask({ WAYLAND_DISPLAY: 'wayland-0' }, seams(true, true)))).toBe('gui');
    expect(via(await ask({ DISPLAY: ':0' }, seams(false, true)))).toBe('tty');
    expect(via(await ask({}, seams(true, true)))).toBe('tty');
    expect(via(await ask({ DISPLAY: ':0' }, seams(true, true), 'tty'))).toBe('tty');
    expect(await ask({}, seams(true, false))).toEqual({ decision: 'deny', reason: NO_WAY_TO_ASK, via: 'none' });
  });

  it('denies an invalid request without asking anyone', async () => {
    let asked = false;
    const outcome = await askConsent(
      { ...request('work'), vm: { name: 'work', label: 'Work', color: 'red' } },
      { env: gui, logger: quiet, seams: { gjsInstalled: () => true, showDialog: async () => ((asked = true), { decision: 'allow-once', reason: 'user', via: 'gui' }) } },
    );
    expect(outcome.decision).toBe('deny');
    expect(outcome.reason).toMatch(/^invalid request: vm.color/);
    expect(asked).toBe(false);
  });
});
