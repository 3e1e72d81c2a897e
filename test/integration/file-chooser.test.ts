import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { typed } from '../../src/dbus/values.js';
import type { DialogReply } from '../../src/testbed/world.js';
import { World } from '../../src/testbed/world.js';

/**
 * FileChooser from a guest session to the host dialog and back, through the
 * stock xdg-desktop-portal on both sides, the real document store, and our
 * daemon over hybrid vsock. Only the human is scripted.
 */
let world: World;
let files: string;

beforeAll(async () => {
  world = await World.start([
    { name: 'work', label: 'Work' },
    { name: 'shop', label: 'Shopping' },
  ]);
  files = path.join(world.root, 'alice');
  mkdirSync(files);
});
afterAll(async () => {
  await world?.stop();
});

function hostFile(name: string, content: string): string {
  const p = path.join(files, name);
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, content);
  return p;
}
const url = (p: string) => `file://${p}`;
const urisOf = (r: DialogReply) => (r.results.uris?.value as string[] | undefined) ?? [];
const local = (uri: string) => fileURLToPath(uri);

describe('OpenFile', () => {
  it('gives the app a URI in its share that reads the chosen host bytes', async () => {
    const chosen = hostFile('Reports/q3.txt', 'quarterly numbers');
    world.dialog.behave(() => ({ response: 0, uris: [url(chosen)] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Open Report');
    expect(reply.response).toBe(0);
    const [uri] = urisOf(reply);
    expect(uri).toMatch(new RegExp(`^file://${world.guest('work').mount}/[A-Za-z0-9]+/q3\\.txt$`));
    expect(readFileSync(local(uri!), 'utf8')).toBe('quarterly numbers');
    writeFileSync(chosen, 'revised numbers');
    expect(readFileSync(local(uri!), 'utf8')).toBe('revised numbers');
  });

  it('shows the host dialog titled with the VM name', async () => {
    world.dialog.behave(() => ({ response: 1 }));
    await world.fileDialog('work', 'OpenFile', 'Open Report');
    expect(world.dialog.calls.at(-1)).toMatchObject({ method: 'OpenFile', title: 'Work: Open Report' });
  });

  it('honours the user\'s read-only choice: an opened file is writable only when the dialog says so', async () => {
    // The daemon calls the scripted backend directly (the host frontend would
    // have picked it too, by UseIn=scripted), so its `writable` reaches us.
    const rw = hostFile('rw.txt', 'original');
    world.dialog.behave(() => ({ response: 0, uris: [url(rw)], writable: true }));
    const writable = await world.fileDialog('work', 'OpenFile', 'Open');
    writeFileSync(local(urisOf(writable)[0]!), 'edited in the VM');
    expect(readFileSync(rw, 'utf8')).toBe('edited in the VM');

    // "Open files read-only" ticked.
    const ro = hostFile('ro.txt', 'original');
    world.dialog.behave(() => ({ response: 0, uris: [url(ro)], writable: false }));
    const readOnly = await world.fileDialog('work', 'OpenFile', 'Open');
    expect(() => writeFileSync(local(urisOf(readOnly)[0]!), 'tampered')).toThrow(/EACCES|EPERM|EROFS/);
    expect(readFileSync(ro, 'utf8')).toBe('original');

    // A backend that does not say is read-only.
    const quiet = hostFile('quiet.txt', 'original');
    world.dialog.behave(() => ({ response: 0, uris: [url(quiet)] }));
    const unsaid = await world.fileDialog('work', 'OpenFile', 'Open');
    expect(() => writeFileSync(local(urisOf(unsaid)[0]!), 'tampered')).toThrow(/EACCES|EPERM|EROFS/);
    expect(readFileSync(quiet, 'utf8')).toBe('original');
  });

  it('returns every file with multiple', async () => {
    const a = hostFile('m/a.txt', 'A');
    const b = hostFile('m/b.txt', 'B');
    world.dialog.behave(() => ({ response: 0, uris: [url(a), url(b)] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Pick', { multiple: typed('b', true) });
    expect(world.dialog.calls.at(-1)!.options).toMatchObject({ multiple: true });
    expect(urisOf(reply).map((u) => readFileSync(local(u), 'utf8'))).toEqual(['A', 'B']);
  });

  it('shares a whole directory with directory', async () => {
    hostFile('Photos/2024/beach.jpg', 'jpeg bytes');
    hostFile('Photos/cat.jpg', 'cat');
    world.dialog.behave(() => ({ response: 0, uris: [url(path.join(files, 'Photos'))] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Pick a folder', { directory: typed('b', true) });
    expect(world.dialog.calls.at(-1)!.options).toMatchObject({ directory: true });
    const dir = local(urisOf(reply)[0]!);
    expect(path.basename(dir)).toBe('Photos');
    expect(readdirSync(dir).sort()).toEqual(['2024', 'cat.jpg']);
    expect(readFileSync(path.join(dir, '2024', 'beach.jpg'), 'utf8')).toBe('jpeg bytes');
    expect(() => writeFileSync(path.join(dir, 'new.txt'), 'x')).toThrow(/EACCES|EPERM|EROFS/);
  });

  it('passes filters and choices to the host dialog and brings the app\'s own choices and filter back', async () => {
    const f = hostFile('notes.md', '# notes');
    const filters = [['Markdown', [[0, '*.md']]], ['Text ', [[1, 'text/plain']]]];
    const choices = [['enc', 'Encoding', [['utf8', 'UTF-8'], ['latin1', 'Latin-1']], 'utf8'], ['ro', 'Read only', [], 'false']];
    // The user picks from what the dialog shows: the second encoding, the box ticked, the second filter.
    world.dialog.behave((call) => {
      const [[encId, , encValues], [roId]] = call.options.choices as [[string, string, [string, string][], string], [string, string, [string, string][], string]];
      const shown = call.options.filters as [string, [number, string][]][];
      return { response: 0, uris: [url(f)], choices: [[encId!, encValues![1]![0]], [roId!, 'true']], current_filter: shown[1]! };
    });
    const reply = await world.fileDialog('work', 'OpenFile', 'Open', {
      filters: typed('a(sa(us))', filters),
      current_filter: typed('(sa(us))', filters[0]),
      choices: typed('a(ssa(ss)s)', choices),
      accept_label: typed('s', '_Import'),
    });
    expect(world.dialog.calls.at(-1)!.options).toMatchObject({
      filters: [filters[0], ['Text', [[1, 'text/plain']]]],
      current_filter: filters[0],
      choices: [['c0', 'Encoding', [['v0', 'UTF-8'], ['v1', 'Latin-1']], 'v0'], ['c1', 'Read only', [], 'false']],
      accept_label: '_Import (Work)',
    });
    expect(reply.results.choices?.value).toEqual([['enc', 'latin1'], ['ro', 'true']]);
    expect(reply.results.current_filter?.value).toEqual(['Text ', [[1, 'text/plain']]]);
  });

  it('answers 1 when the user cancels', async () => {
    world.dialog.behave(() => ({ response: 1 }));
    expect((await world.fileDialog('work', 'OpenFile', 'Open')).response).toBe(1);
  });
});

describe('SaveFile and SaveFiles', () => {
  it('SaveFile: what the app writes reaches the host file', async () => {
    const target = path.join(files, 'Saved', 'letter.txt');
    mkdirSync(path.dirname(target), { recursive: true });
    world.dialog.behave(() => ({ response: 0, uris: [url(target)] }));
    const reply = await world.fileDialog('work', 'SaveFile', 'Save Letter', { current_name: typed('s', 'letter.txt') });
    expect(world.dialog.calls.at(-1)).toMatchObject({ method: 'SaveFile', title: 'Work: Save Letter', options: { current_name: 'letter.txt' } });
    expect(existsSync(target)).toBe(false);
    writeFileSync(local(urisOf(reply)[0]!), 'Dear Bob');
    expect(readFileSync(target, 'utf8')).toBe('Dear Bob');
  });

  it('SaveFile: current_folder inside the share opens the matching host folder', async () => {
    const f = hostFile('Docs/a.txt', 'a');
    world.dialog.behave(() => ({ response: 0, uris: [url(f)] }));
    const granted = local(urisOf(await world.fileDialog('work', 'OpenFile', 'Open'))[0]!);
    const target = path.join(files, 'Docs', 'b.txt');
    world.dialog.behave(() => ({ response: 0, uris: [url(target)] }));
    await world.fileDialog('work', 'SaveFile', 'Save', {
      current_folder: typed('ay', Buffer.from(`${path.dirname(granted)}\0`)),
      current_file: typed('ay', Buffer.from('/etc/shadow\0')),
    });
    const asked = world.dialog.calls.at(-1)!.options;
    expect(asked.current_folder).toBe(path.join(files, 'Docs'));
    expect(asked).not.toHaveProperty('current_file');
  });

  it('SaveFiles: every named file is writable from the guest', async () => {
    const folder = path.join(files, 'Export');
    mkdirSync(folder);
    world.dialog.behave((call) => ({ response: 0, uris: (call.options.files as string[]).map((n) => url(path.join(folder, n))) }));
    const reply = await world.fileDialog('work', 'SaveFiles', 'Export', { files: typed('aay', [Buffer.from('one.csv\0'), Buffer.from('two.csv\0')]) });
    expect(world.dialog.calls.at(-1)).toMatchObject({ method: 'SaveFiles', options: { files: ['one.csv', 'two.csv'] } });
    const [one, two] = urisOf(reply);
    writeFileSync(local(one!), '1');
    writeFileSync(local(two!), '2');
    expect(readdirSync(folder).sort()).toEqual(['one.csv', 'two.csv']);
    expect(readFileSync(path.join(folder, 'two.csv'), 'utf8')).toBe('2');
  });
});

describe('Close while the dialog is up', () => {
  it('closes the host dialog and gives the app no success', async () => {
    world.dialog.behave(() => 'leave-open');
    const ac = new AbortController();
    const shown = world.dialog.nextCall();
    const pending = world.fileDialog('work', 'OpenFile', 'Open', {}, ac.signal);
    const call = await shown;
    ac.abort();
    const reply = await pending;
    await expect.poll(() => call.closed, { timeout: 5000 }).toBe(true);
    expect(reply.response).not.toBe(0);
  });
});

describe('isolation, revocation, persistence', () => {
  /** Each test makes its own grant, so any one of them can run alone. */
  async function grant(name: string, content: string): Promise<{ uri: string; id: string; hostPath: string }> {
    const hostPath = hostFile(name, content);
    world.dialog.behave(() => ({ response: 0, uris: [url(hostPath)] }));
    const uri = urisOf(await world.fileDialog('work', 'OpenFile', 'Open'))[0]!;
    return { uri, id: path.basename(path.dirname(local(uri))), hostPath };
  }

  it('VM B cannot see VM A\'s grant', async () => {
    const { uri, id } = await grant('secret.txt', 'work only');
    const shopView = world.guest('shop').mount;
    expect(readFileSync(local(uri), 'utf8')).toBe('work only');
    expect(readdirSync(shopView)).not.toContain(id);
    expect(() => readFileSync(path.join(shopView, id, 'secret.txt'))).toThrow(/ENOENT/);
  });

  it('xdp-vm grants lists it, per VM', async () => {
    const { id, hostPath } = await grant('listed.txt', 'listed');
    const { stdout } = await world.cli(['grants', 'work', '--json']);
    expect(JSON.parse(stdout)).toEqual(expect.arrayContaining([expect.objectContaining({ vm: 'work', id, hostPath, writable: false })]));
    expect((await world.cli(['grants', 'shop'])).stdout).not.toContain(id);
  });

  it('a daemon restart keeps it, and the guest reconnects by itself', async () => {
    const { uri, id } = await grant('kept.txt', 'kept');
    await world.stopDaemon();
    expect(readFileSync(local(uri), 'utf8')).toBe('kept');
    await world.startDaemon();
    expect((await world.cli(['grants', 'work'])).stdout).toContain(id);
    const other = hostFile('after-restart.txt', 'still here');
    world.dialog.behave(() => ({ response: 0, uris: [url(other)] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Open');
    expect(readFileSync(local(urisOf(reply)[0]!), 'utf8')).toBe('still here');
  });

  it('revoke makes the file vanish from the VM at once', async () => {
    const { uri, id } = await grant('revoked.txt', 'soon gone');
    const { stdout } = await world.cli(['grants', 'revoke', 'work', id]);
    expect(stdout).toContain(`Revoked ${id} from work`);
    expect(() => readFileSync(local(uri))).toThrow(/ENOENT/);
    expect((await world.cli(['grants', 'work'])).stdout).not.toContain(id);
    expect(world.daemonLog.some((l) => l.includes('"decision":"revoke"') && l.includes(id))).toBe(true);
  });

  it('revoking an unknown grant or VM is a clear error', async () => {
    await expect(world.cli(['grants', 'revoke', 'work', 'nope'])).rejects.toThrow(/VM "work" has no grant "nope"/);
    await expect(world.cli(['grants', 'revoke', 'attic', 'x'])).rejects.toThrow(/no VM named "attic"; configured: work, shop/);
  });
});
