import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm, type VmConfig } from '../../src/config/schema.js';
import { Bus } from '../../src/dbus/bus.js';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { configureAudit } from '../../src/host/audit.js';
import { requestConsent, type ConsentDeps } from '../../src/host/consent.js';
import { Policy } from '../../src/policy/policy.js';
import { PermissionTables } from '../../src/policy/store.js';
import { startPrivateBus, type PrivateBus } from '../../src/testbed/private-bus.js';
import { pressKeys, waitForWindow } from '../helpers/x11.js';
import { startXvfb, type Xvfb } from '../helpers/xvfb.js';

/**
 * The consent path a device portal takes, end to end on real parts: the
 * policy rows in the real permission store, the GJS dialog on Xvfb answered
 * by keys, "Always allow" remembered as a row that `flatpak permission-show`
 * lists, and one audit line per outcome.
 */
const YUBIKEY = 'usb:1050/0407/cc12345';
const quiet = pino({ level: 'silent' });
let root: string;
let x: Xvfb;
let bus: PrivateBus;
let client: Bus;
let policy: Policy;
let tables: PermissionTables;
let auditFile: string;

const work: VmConfig = { ...Vm.parse({ color: '#3465a4', transport: { type: 'vsock', cid: 5 } }), name: 'work', label: 'Work' };

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'xdp-vm-consent-flow-'));
  x = await startXvfb();
  bus = await startPrivateBus({
    dir: root,
    env: { HOME: root, XDG_DATA_HOME: path.join(root, 'data'), XDG_RUNTIME_DIR: root, PATH: process.env.PATH ?? '/usr/bin' },
    services: [{ name: 'org.freedesktop.impl.portal.PermissionStore', exec: requireProgram('xdg-permission-store') }],
  });
  client = await Bus.connect(bus.address);
  policy = await Policy.open(client, quiet);
  tables = new PermissionTables(client);
  auditFile = path.join(root, 'audit.jsonl');
  configureAudit({ file: auditFile, logger: quiet });
});
afterAll(async () => {
  await policy?.close();
  client?.close();
  await bus?.stop();
  await x?.stop();
  rmSync(root, { recursive: true, force: true });
});

function deps(): ConsentDeps {
  return {
    policy,
    remember: (row) => tables.set(row),
    mode: 'gui',
    log: quiet,
    ask: { env: { DISPLAY: x.display }, dialog: { env: { HOME: root, GSETTINGS_BACKEND: 'memory', NO_AT_BRIDGE: '1' } } },
  };
}

const question = (requestId: string) => ({
  vm: work,
  portal: 'Usb' as const,
  arg: YUBIKEY,
  requestId,
  summary: 'Work wants to use the USB device "YubiKey 5" (1050:0407)',
  guestText: [{ label: 'Reason given by the VM', text: 'sign in to the bank' }],
});

function auditLines(): Record<string, unknown>[] {
  return readFileSync(auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('a device request with no row', () => {
  it('asks the user; Escape denies, and the audit says the user closed it', async () => {
    const answer = requestConsent(question('r1'), deps());
    await pressKeys(x.display, await waitForWindow(x.display, 'Permission request from Work'), 'Escape');
    expect(await answer).toEqual({ allowed: false, reason: 'closed' });
    expect(auditLines().at(-1)).toMatchObject({ vm: 'work', portal: 'Usb', request: 'r1', decision: 'deny', reason: 'closed' });
  });

  it('"Always allow" allows, writes the row, and the next request is allowed without a dialog', async () => {
    const answer = requestConsent(question('r2'), deps());
    const win = await waitForWindow(x.display, 'Permission request from Work');
    await sleep(1000); // past the dialog's arming delay
    await pressKeys(x.display, win, 'Tab', 'Tab', 'Return');
    expect(await answer).toEqual({ allowed: true, reason: 'user' });
    const { stdout } = await runProgram(requireProgram('flatpak'), ['permission-show', 'work'], { env: bus.env });
    expect(stdout).toMatch(new RegExp(`xdp-vm-usb\\s+${YUBIKEY}\\s+work\\s+yes`));
    await expect.poll(async () => (await requestConsent(question('r3'), deps())).reason, { timeout: 5000 }).toBe('policy');
    expect(auditLines().at(-1)).toMatchObject({ request: 'r3', decision: 'allow', reason: 'policy', rule: `Usb ${YUBIKEY} work allow` });
  });

  it('a deny row set with flatpak refuses at once, without a dialog', async () => {
    await runProgram(requireProgram('flatpak'), ['permission-set', 'xdp-vm-usb', YUBIKEY, 'work', 'no'], { env: bus.env });
    await expect.poll(async () => (await requestConsent(question('r4'), deps())).allowed, { timeout: 5000 }).toBe(false);
    expect(auditLines().at(-1)).toMatchObject({ decision: 'deny', reason: 'policy' });
  });
});
