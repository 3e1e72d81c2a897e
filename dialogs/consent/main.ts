import GLib from 'gi://GLib';
import Adw from 'gi://Adw?version=1';
import System from 'system';

import { ConsentRequest, LIMITS, describeIssues, type ConsentAnswer } from '../../src/consent/contract.js';
import { showConsentWindow } from './view.js';

/**
 * Entry point of the consent dialog: `gjs -m main.js [--dump-widgets] < request.json`.
 * Exit 0 with one JSON answer line on stdout, or exit 2 with one line on stderr and nothing on
 * stdout, so the host never mistakes a half-written answer for a decision.
 */

const PROGRAM = 'xdp-vm-consent';

function reject(message: string): never {
  printerr(`${PROGRAM}: ${message}`);
  System.exit(2);
}

function parseArgs(args: readonly string[]): { dumpWidgets: boolean } {
  let dumpWidgets = false;
  for (const arg of args) {
    if (arg === '--dump-widgets') dumpWidgets = true;
    else reject(`unknown argument ${JSON.stringify(arg)}`);
  }
  return { dumpWidgets };
}

function readRequest(): ConsentRequest {
  // A GLib IOChannel rather than Gio's Unix streams: those moved to the GioUnix namespace in
  // newer GLib, and the channel reads a pipe or a socket alike.
  const channel = GLib.IOChannel.unix_new(0);
  channel.set_encoding(null);
  let bytes: Uint8Array;
  try {
    [, bytes] = channel.read_to_end();
  } catch (e) {
    reject(`invalid request: cannot read stdin (${e instanceof Error ? e.message : String(e)})`);
  }
  if (bytes.length === 0) reject('invalid request: stdin was empty');
  if (bytes.length > LIMITS.requestBytes) reject(`invalid request: larger than ${LIMITS.requestBytes} bytes`);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    reject(`invalid request: not UTF-8 JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  const parsed = ConsentRequest.safeParse(json);
  if (!parsed.success) reject(`invalid request: ${describeIssues(parsed.error)}`);
  return parsed.data;
}

const { dumpWidgets } = parseArgs(System.programArgs);
const request = readRequest();

Adw.init();
const loop = new GLib.MainLoop(null, false);
let answer: ConsentAnswer | undefined;
showConsentWindow(request, {
  dumpWidgets,
  onAnswer(a) {
    answer = a;
    loop.quit();
  },
});
loop.run();

print(JSON.stringify(answer));
System.exit(0);
