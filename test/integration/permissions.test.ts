import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireProgram } from '../../src/deps.js';
import { ExecError, runProgram } from '../../src/exec.js';
import { parseAuditLines } from '../../src/host/audit.js';
import { cliEntry } from '../../src/paths.js';
import { startPrivateBus, type PrivateBus } from '../../src/testbed/private-bus.js';
import { World } from '../../src/testbed/world.js';

/**
 * Policy rows through the real xdg-permission-store: written by `xdp-vm
 * permissions`, read by the real flatpak CLI and the other way round, and
 * obeyed by the running daemon on its next request.
 */
const STORE = ['--session', '--dest', 'org.freedesktop.impl.portal.PermissionStore', '--object-path', '/org/freedesktop/impl/portal/PermissionStore'];
const METHOD = 'org.freedesktop.impl.portal.PermissionStore';

function runner(env: () => Record<string, string>) {
  return {
    xdpVm: (args: string[]) => runProgram(process.execPath, [cliEntry(), ...args], { env: env(), timeoutMs: 20_000 }),
    flatpak: async (args: string[]) => (await runProgram(requireProgram('flatpak'), args, { env: env(), timeoutMs: 20_000 })).stdout,
    gdbus: (method: string, ...args: string[]) => runProgram('/usr/bin/gdbus', ['call', ...STORE, '--method', `${METHOD}.${method}`, ...args], { env: env() }),
  };
}

/** flatpak prints tab-separated columns; this is one row as cells. */
const cells = (out: string) => out.trim().split('\n').filter(Boolean).map((l) => l.split('\t').map((c) => c.trim()));

async function failure(p: Promise<unknown>): Promise<ExecError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ExecError);
  return err as ExecError;
}

describe('xdp-vm permissions, without a daemon', () => {
  let dir: string;
  let bus: PrivateBus;
  let env: Record<string, string>;
  const { xdpVm, flatpak, gdbus } = runner(() => env);

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'xdp-vm-perms-'));
    const home = (d: string) => (mkdirSync(path.join(dir, d), { recursive: true, mode: 0o700 }), path.join(dir, d));
    const base = { HOME: home('home'), XDG_DATA_HOME: home('data'), XDG_CONFIG_HOME: home('config'), XDG_STATE_HOME: home('state'), XDG_RUNTIME_DIR: home('run'), PATH: process.env.PATH ?? '/usr/bin:/bin' };
    bus = await startPrivateBus({ dir, env: base, services: [{ name: 'org.freedesktop.impl.portal.PermissionStore', exec: requireProgram('xdg-permission-store') }] });
    const config = path.join(dir, 'config.json');
    const vm = (name: string, tags: string[]) => ({ tags, transport: { type: 'hybrid-vsock', socket: path.join(dir, `${name}.vsock`) } });
    writeFileSync(config, JSON.stringify({ vms: { work: vm('work', ['dev']), shop: vm('shop', []) } }));
    env = { ...bus.env, XDP_VM_CONFIG: config };
  });
  afterAll(async () => {
    await bus?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('writes rows that flatpak permission-list and permission-show print', async () => {
    await xdpVm(['permissions', 'set', 'work', 'FileChooser', 'deny']);
    await xdpVm(['permissions', 'set', '@tag:dev', 'Usb', 'allow', 'usb:1050/0407/CC12345']);
    await xdpVm(['permissions', 'set', '@anyvm', 'network', 'ask', 'br0']);
    expect(cells(await flatpak(['permission-list', 'xdp-vm-filechooser']))).toEqual([['xdp-vm-filechooser', '*', 'work', 'no', '0x00']]);
    expect(cells(await flatpak(['permission-show', 'work']))).toEqual([['xdp-vm-filechooser', '*', 'work', 'no', '0x00']]);
    expect(cells(await flatpak(['permission-show', '@tag:dev']))).toEqual([['xdp-vm-usb', 'usb:1050/0407/CC12345', '@tag:dev', 'yes', '0x00']]);
    expect(cells(await flatpak(['permission-show', '@anyvm']))).toEqual([['xdp-vm-network', 'br0', '@anyvm', 'ask', '0x00']]);
    const all = cells(await flatpak(['permission-list']));
    expect(all).toContainEqual(['xdp-vm-usb', 'usb:1050/0407/CC12345', '@tag:dev', 'yes', '0x00']);
    expect(all).toHaveLength(3);
  });

  it('lists them for humans and as JSON', async () => {
    const human = (await xdpVm(['permissions', 'list'])).stdout;
    expect(human).toMatch(/^PORTAL\s+ARGUMENT\s+VM\s+DECISION$/m);
    expect(human).toMatch(/^FileChooser\s+\*\s+work\s+deny$/m);
    expect(human).toMatch(/^Usb\s+usb:1050\/0407\/CC12345\s+@tag:dev\s+allow$/m);
    const { rows } = JSON.parse((await xdpVm(['permissions', 'list', '--json'])).stdout) as { rows: unknown[] };
    expect(rows).toContainEqual({ portal: 'Network', argument: 'br0', vm: '@anyvm', decision: 'ask', table: 'xdp-vm-network', id: 'br0' });
    expect(rows).toHaveLength(3);
  });

  it('shows what applies to a VM: its own rows, its tags\' and @anyvm\'s', async () => {
    const work = JSON.parse((await xdpVm(['permissions', 'show', 'work', '--json'])).stdout) as { tags: string[]; rows: { vm: string }[] };
    expect(work.tags).toEqual(['dev']);
    expect(work.rows.map((r) => r.vm).sort()).toEqual(['@anyvm', '@tag:dev', 'work']);
    const shop = JSON.parse((await xdpVm(['permissions', 'show', 'shop', '--json'])).stdout) as { rows: { vm: string }[] };
    expect(shop.rows.map((r) => r.vm)).toEqual(['@anyvm']);
    expect((await xdpVm(['permissions', 'show', '@tag:dev'])).stdout).toMatch(/^Usb\s+usb:1050\/0407\/CC12345\s+@tag:dev\s+allow$/m);
  });

  it('reads rows that flatpak permission-set wrote, and reports garbage instead of guessing', async () => {
    await flatpak(['permission-set', 'xdp-vm-filechooser', 'save', 'shop', 'yes']);
    await flatpak(['permission-set', 'xdp-vm-filechooser', 'open', 'shop', 'perhaps']);
    await gdbus('SetPermission', 'xdp-vm-usb', 'true', '*', 'org.example.NotAVm', "['yes']");
    const { stdout, stderr } = await xdpVm(['permissions', 'list']);
    expect(stdout).toMatch(/^FileChooser\s+save\s+shop\s+allow$/m);
    expect(stdout).not.toMatch(/perhaps/);
    expect(stderr).toContain('warning: ignoring xdp-vm-filechooser open shop: the value must be exactly one of "yes", "no" or "ask"');
    expect(stderr).toContain('warning: ignoring xdp-vm-usb * org.example.NotAVm');
    const { invalid } = JSON.parse((await xdpVm(['permissions', 'list', '--json'])).stdout) as { invalid: unknown[] };
    expect(invalid).toHaveLength(2);
  });

  it('forgets rows that flatpak permission-remove and permission-reset took away', async () => {
    await flatpak(['permission-remove', 'xdp-vm-filechooser', 'save', 'shop']);
    await flatpak(['permission-reset', 'org.example.NotAVm']);
    const { rows, invalid } = JSON.parse((await xdpVm(['permissions', 'list', '--json'])).stdout) as { rows: { vm: string }[]; invalid: unknown[] };
    expect(rows.map((r) => r.vm).sort()).toEqual(['@anyvm', '@tag:dev', 'work']);
    expect(invalid).toHaveLength(1);
  });

  it('resets one VM, then everything, and flatpak sees the rows gone', async () => {
    expect((await xdpVm(['permissions', 'reset', 'work'])).stdout).toBe('Removed 1 row(s) of work.\n');
    expect((await flatpak(['permission-show', 'work'])).trim()).toBe('');
    expect((await xdpVm(['permissions', 'reset', '--all'])).stdout).toBe('Removed all 3 row(s).\n');
    for (const t of ['xdp-vm-filechooser', 'xdp-vm-usb', 'xdp-vm-network']) expect((await flatpak(['permission-list', t])).trim()).toBe('');
    expect((await xdpVm(['permissions', 'list'])).stdout).toBe('No rows.\n');
  });

  const mistakes: [string, string[], RegExp][] = [
    ['an unknown VM', ['set', 'ghost', 'FileChooser', 'deny'], /no VM named "ghost"; configured: work, shop; or use @tag:TAG or @anyvm/],
    ['an unknown portal', ['set', 'work', 'Printer', 'deny'], /unknown portal "Printer"; known portals: FileChooser, Settings, Usb, Network/],
    ['an unknown decision', ['set', 'work', 'FileChooser', 'yes'], /unknown decision "yes"; choose allow, deny, ask/],
    ['a bad argument', ['set', 'work', 'FileChooser', 'deny', 'print'], /"print" is not an argument of FileChooser: expected open, save or save-files/],
    ['a bad USB id', ['set', 'work', 'Usb', 'deny', '1050:0407'], /expected a device as usb:VID\/PID\/SERIAL/],
    ['a bad tag', ['set', '@tag:Bad', 'Usb', 'deny'], /neither @anyvm nor @tag:TAG/],
    ['an unknown form', ['grant', 'work'], /unknown form "grant"; choose list, show, set, reset/],
    ['reset without a VM', ['reset'], /permissions reset takes VM or --all/],
  ];
  for (const [what, args, message] of mistakes) {
    it(`names the accepted choices for ${what}`, async () => {
      const err = await failure(xdpVm(['permissions', ...args]));
      expect(err.exitCode).toBe(2);
      expect(err.stderr).toMatch(message);
    });
  }

  it('has --help on every form', async () => {
    expect((await xdpVm(['permissions', '--help'])).stdout).toMatch(/^Usage: xdp-vm permissions list/);
    for (const form of ['list', 'show', 'set', 'reset']) expect((await xdpVm(['permissions', form, '--help'])).stdout).toMatch(new RegExp(`^Usage: xdp-vm permissions ${form}`));
    expect((await xdpVm(['--help'])).stdout).toMatch(/permissions\s+allow, deny or ask/);
  });
});

const FILE_CHOOSER_IFACE = 'org.freedesktop.impl.portal.FileChooser';

describe('the daemon obeys the rows', () => {
  let world: World;
  let file: string;
  const { xdpVm, flatpak, gdbus } = runner(() => ({ ...world.hostBus.env, XDP_VM_CONFIG: world.configPath }));
  const dialogsOf = (vm: string) => world.dialog.calls.filter((c) => c.title.startsWith(`${vm}:`)).length;
  const auditOf = (vm: string) => parseAuditLines(readFileSync(world.auditFile, 'utf8').split('\n')).filter((l) => l.vm === vm);

  beforeAll(async () => {
    world = await World.start([
      { name: 'work', tags: ['office'] },
      { name: 'shop', tags: ['untrusted'] },
    ]);
    mkdirSync(path.join(world.root, 'alice'));
    file = path.join(world.root, 'alice', 'list.txt');
    writeFileSync(file, 'milk');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${file}`] }));
  });
  afterAll(async () => {
    await world?.stop();
  });

  it('deny: the app gets response 2 at once, no host dialog is shown, and the audit says why', async () => {
    await xdpVm(['permissions', 'set', 'work', 'FileChooser', 'deny']);
    const before = world.dialog.calls.length;
    const reply = await world.fileDialog('work', 'OpenFile', 'Open a file');
    expect(reply.response).toBe(2);
    expect(world.dialog.calls.length).toBe(before);
    expect(auditOf('work').at(-1)).toMatchObject({ portal: 'FileChooser', decision: 'deny', reason: 'policy', grant: null, rule: 'FileChooser * work deny' });
    expect((await xdpVm(['log', '--vm', 'work'])).stdout).toMatch(/^\d\d:\d\d:\d\d work FileChooser deny \(policy\) by rule "FileChooser \* work deny"$/m);
    const recent = JSON.parse((await xdpVm(['log', '--since', '10m', '--json'])).stdout) as { vm: string; reason: string }[];
    expect(recent).toContainEqual(expect.objectContaining({ vm: 'work', reason: 'policy' }));
    expect((await xdpVm(['log', '--since', new Date(Date.now() + 3_600_000).toISOString()])).stdout).toBe('No audit lines match.\n');
    // shop is not work
    expect((await world.fileDialog('shop', 'OpenFile', 'Open')).response).toBe(0);
  });

  it('a change made with flatpak permission-set applies to the next request, without a restart', async () => {
    await flatpak(['permission-set', 'xdp-vm-filechooser', '*', 'work', 'yes']);
    // The VM-wide deny of the test before had shut the portal in the guest: it opens again as soon as the guest hears.
    await expect.poll(() => world.guestExports('work'), { timeout: 10_000 }).toContain(FILE_CHOOSER_IFACE);
    const before = dialogsOf('work');
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(0);
    expect(dialogsOf('work')).toBe(before + 1);
    await flatpak(['permission-set', 'xdp-vm-filechooser', 'open', 'work', 'no']);
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(2);
    expect((await world.fileDialog('work', 'SaveFile', 'Save', {})).response).not.toBe(2);
    expect(dialogsOf('work')).toBe(before + 2);
  });

  it('so does one made with gdbus, and one removed with flatpak permission-reset', async () => {
    await gdbus('DeletePermission', 'xdp-vm-filechooser', 'open', 'work');
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(0);
    await gdbus('SetPermission', 'xdp-vm-filechooser', 'true', '*', '@anyvm', "['no']");
    await flatpak(['permission-reset', 'work']);
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(2);
    expect((await world.fileDialog('shop', 'OpenFile', 'Open')).response).toBe(2);
    await xdpVm(['permissions', 'reset', '--all']);
    await expect.poll(() => world.guestExports('shop'), { timeout: 10_000 }).toContain(FILE_CHOOSER_IFACE);
    expect((await world.fileDialog('shop', 'OpenFile', 'Open')).response).toBe(0);
  });

  it('tags: a VM\'s own row beats its tag\'s, and an argument narrows a row', async () => {
    await xdpVm(['permissions', 'set', '@tag:untrusted', 'FileChooser', 'deny', 'save']);
    const before = dialogsOf('shop');
    expect((await world.fileDialog('shop', 'SaveFile', 'Save', {})).response).toBe(2);
    expect(dialogsOf('shop')).toBe(before);
    expect((await world.fileDialog('shop', 'OpenFile', 'Open')).response).toBe(0);
    expect((await world.fileDialog('work', 'SaveFile', 'Save', {})).response).not.toBe(2);
    await xdpVm(['permissions', 'set', 'shop', 'FileChooser', 'allow']);
    expect((await world.fileDialog('shop', 'SaveFile', 'Save', {})).response).not.toBe(2);
    expect(dialogsOf('shop')).toBe(before + 2);
    await xdpVm(['permissions', 'reset', '--all']);
  });

  it('keeps following changes after the permission store restarts', async () => {
    const bus = ['call', '--session', '--dest', 'org.freedesktop.DBus', '--object-path', '/org/freedesktop/DBus'];
    const { stdout } = await runProgram('/usr/bin/gdbus', [...bus, '--method', 'org.freedesktop.DBus.GetConnectionUnixProcessID', 'org.freedesktop.impl.portal.PermissionStore'], { env: world.hostBus.env });
    const storePid = Number(/uint32 (\d+)/.exec(stdout)![1]);
    process.kill(storePid, 'SIGTERM');
    await expect.poll(() => world.daemonLog.some((l) => l.includes('the permission store changed hands')), { timeout: 10_000 }).toBe(true);
    await flatpak(['permission-set', 'xdp-vm-filechooser', '*', 'work', 'no']); // starts a new store
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(2);
    await flatpak(['permission-set', 'xdp-vm-filechooser', '*', 'work', 'yes']);
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(0);
    await xdpVm(['permissions', 'reset', '--all']);
  });

  it('a garbage entry is reported and treated as no row', async () => {
    await gdbus('SetPermission', 'xdp-vm-filechooser', 'true', '*', 'work', "['sure']");
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(0);
    expect(world.daemonLog.some((l) => l.includes('ignoring a permission store entry') && l.includes('"app":"work"'))).toBe(true);
    await xdpVm(['permissions', 'reset', '--all']);
  });
});
