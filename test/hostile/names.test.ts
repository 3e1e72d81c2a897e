import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { stringToBytes, typed } from '../../src/dbus/values.js';
import { parseAuditLines } from '../../src/host/audit.js';
import { DocStore } from '../helpers/doc-store.js';
import { RawLink } from '../helpers/raw-link.js';
import type { DialogCall, UserAction } from '../../src/testbed/scripted-dialog.js';
import { World, type DialogReply } from '../../src/testbed/world.js';

/**
 * Names and links a hostile guest uses to reach files the user never chose.
 *
 * SaveFiles' `files` and SaveFile's `current_name` are joined by the host
 * dialog to the folder the user picks: xdg-desktop-portal-gtk builds each
 * result with g_file_get_child(folder, name), and for a local file GLib
 * canonicalises the joined path lexically, so "Export/../x" is "x" next to
 * Export. The scripted user here joins exactly that way (path.resolve), so
 * a name the host let through would really escape. Each name must be one
 * path component (no "/", not "." or "..", no NUL, at most 255 bytes) and is
 * refused before any dialog is shown; what the dialog returns must lie
 * directly in the one folder chosen, with the names asked for; and a chosen
 * path whose last component is a symbolic link is never granted.
 *
 * Every attack goes once through a real guest session (the app's call, the
 * guest's stock xdg-desktop-portal, our guest backend) and once over a raw
 * link that skips the guest backend's own checks, as a compromised guest would.
 */
let world: World;
let store: DocStore;
let alice: string;
/** The folder the scripted user picks for every save. */
let folder: string;
let outside: string;
let secret: string;
let passwd: string;

/** What the user does with a save dialog: pick `folder` and accept, joining names the way GLib does. */
function glibJoiningUser(call: DialogCall): UserAction {
  if (call.method === 'SaveFiles') {
    const names = (call.options.files as string[] | undefined) ?? [];
    return { response: 0, uris: names.map((n) => pathToFileURL(path.resolve(folder, n)).href) };
  }
  if (call.method === 'SaveFile') return { response: 0, uris: [pathToFileURL(path.resolve(folder, String(call.options.current_name ?? 'untitled'))).href] };
  return { response: 1 };
}

beforeAll(async () => {
  world = await World.start([{ name: 'work', label: 'Work' }, { name: 'evil' }]);
  store = await DocStore.open(world.hostBus.address);
  alice = path.join(world.root, 'alice');
  folder = path.join(alice, 'Documents', 'Export');
  mkdirSync(folder, { recursive: true });
  outside = path.join(world.root, 'outside');
  mkdirSync(outside);
  secret = path.join(outside, 'secret.txt');
  writeFileSync(secret, 'the host user\'s secret');
  passwd = readFileSync('/etc/passwd', 'utf8');
});
afterAll(async () => {
  store?.close();
  await world?.stop();
});

/** Documents a test set up on purpose (a folder the user gave a VM earlier); everything else is taken back after each test. */
const fixtures = new Set<string>();

beforeEach(() => {
  world.dialog.behave(glibJoiningUser);
});
afterEach(async () => {
  // Each test starts from no grants, so one escape is reported once, by its own test.
  for (const vm of ['work', 'evil']) for (const d of await store.documentsOf(vm)) if (!fixtures.has(d.id)) await store.revoke(vm, d.id);
});

const bytesOf = (names: string[]) => typed('aay', names.map(stringToBytes));
const urisOf = (reply: DialogReply) => (reply.results.uris?.value as string[] | undefined) ?? [];

/** Every file and folder under `dir`, relative to it. */
function tree(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const rel = e.name;
    out.push(rel);
    if (e.isDirectory()) for (const sub of tree(path.join(dir, e.name))) out.push(path.join(rel, sub));
  }
  return out.sort();
}

/** What the VM's app does with an answer: write each file it was given, so an escape would leave a file behind. */
function appWritesEvery(reply: DialogReply): void {
  if (reply.response !== 0) return;
  for (const uri of urisOf(reply)) {
    try {
      writeFileSync(fileURLToPath(uri), 'written by the VM');
    } catch {
      /* the share refused it */
    }
  }
}

async function grantsOf(vm: string): Promise<{ id: string; hostPath: string; writable: boolean }[]> {
  return JSON.parse((await world.cli(['grants', vm, '--json'])).stdout) as { id: string; hostPath: string; writable: boolean }[];
}

/** Nothing at all reached the VM: no grant in the CLI's list, no document in the store, nothing in its view. */
async function expectNothingGranted(vm: string): Promise<void> {
  expect(await grantsOf(vm)).toEqual([]);
  expect(await store.documentsOf(vm)).toEqual([]);
  expect(existsSync(world.viewOf(vm)) ? readdirSync(world.viewOf(vm)) : []).toEqual([]);
}

/** A hostile guest's own link: hello, then requests by hand. */
async function rawLink(vm: string): Promise<{ link: RawLink; request: (id: number, params: unknown) => Promise<Record<string, unknown>> }> {
  const link = await RawLink.connect(world.endpointOf(vm));
  link.hello();
  await expect.poll(() => link.frames[0]?.t).toBe('welcome');
  const request = async (id: number, params: unknown) => {
    link.send({ t: 'req', id, method: 'fileChooser.open', params });
    await expect.poll(() => link.frames.find((f) => f.id === id), { timeout: 15_000 }).toBeDefined();
    return link.frames.find((f) => f.id === id)!;
  };
  return { link, request };
}

const ESCAPING_FILES = ['ok.txt', '../escaped-1.txt', '../../escaped-2.txt', '../.bashrc'];

/**
 * Names that are not one path component. Absolute ones point into this
 * test's own scratch folder: the daemon runs as whoever runs the tests
 * (root here), and a missing check must not write into the real /etc.
 */
const BAD_NAME_SETS: [string, () => string[]][] = [
  ["'..' segments", () => ESCAPING_FILES],
  ["'..' itself (the parent folder, read-write)", () => ['..']],
  ["'.' (the folder itself)", () => ['.']],
  ["'/' inside", () => ['sub/x.txt']],
  ['an absolute path', () => [path.join(outside, 'absolute.txt')]],
  ['a NUL', () => ['a\u0000b.txt']],
  ['more than 255 bytes', () => ['x'.repeat(256)]],
  ['more than 255 bytes of UTF-8 (128 × é)', () => ['é'.repeat(128)]],
  ['an empty name', () => ['']],
];

describe('SaveFiles names, from an app in the guest', () => {
  for (const [what, names] of BAD_NAME_SETS) {
    it(`SaveFiles names with ${what} are refused before any dialog is shown`, async () => {
      const calls = world.dialog.calls.length;
      const before = tree(alice);
      const reply = await world.fileDialog('work', 'SaveFiles', 'Export', { files: bytesOf(names()) });
      appWritesEvery(reply);
      expect(reply.response).toBe(2);
      expect(world.dialog.calls.length, 'the host dialog was shown').toBe(calls);
      await expectNothingGranted('work');
      expect(tree(alice)).toEqual(before);
    });
  }

  it('no file appears above the chosen folder, whatever SaveFiles was answered', () => {
    for (const escaped of [path.join(alice, 'Documents', 'escaped-1.txt'), path.join(alice, 'escaped-2.txt'), path.join(alice, 'Documents', '.bashrc'), path.join(outside, 'absolute.txt')]) {
      expect(existsSync(escaped), escaped).toBe(false);
    }
  });

  it('SaveFiles names that are one component each, odd as they look, are shown and granted in the chosen folder only', async () => {
    const names = ['report.txt', '...', '.hidden', 'a..b', `${'é'.repeat(127)}x`];
    const calls = world.dialog.calls.length;
    const reply = await world.fileDialog('work', 'SaveFiles', 'Export', { files: bytesOf(names) });
    expect(reply.response).toBe(0);
    expect(world.dialog.calls.slice(calls)).toMatchObject([{ method: 'SaveFiles', options: { files: names } }]);
    appWritesEvery(reply);
    expect(readdirSync(folder).filter((n) => names.includes(n)).sort()).toEqual([...names].sort());
    const grants = await grantsOf('work');
    expect(grants.map((g) => g.hostPath).sort()).toEqual(names.map((n) => path.join(folder, n)).sort());
    expect(grants.every((g) => g.writable)).toBe(true);
  });
});

/** current_name values that are not one path component (a NUL only over a raw link: a D-Bus string cannot hold one). */
const BAD_CURRENT_NAMES: [string, () => string][] = [
  ["'../../etc/x'", () => '../../etc/x'],
  ["'../../x' (above the folder shown)", () => '../../x'],
  ['an absolute path', () => path.join(outside, 'x')],
  ["'..'", () => '..'],
  ["'a/b'", () => 'a/b'],
  ['a NUL', () => 'a\u0000b'],
  ['256 bytes', () => 'n'.repeat(256)],
];

describe('SaveFile current_name, from an app in the guest', () => {
  for (const [what, name] of BAD_CURRENT_NAMES.filter(([w]) => w !== 'a NUL')) {
    it(`SaveFile current_name ${what} is refused before any dialog is shown`, async () => {
      const calls = world.dialog.calls.length;
      const before = tree(alice);
      const reply = await world.fileDialog('work', 'SaveFile', 'Save', { current_name: typed('s', name()) });
      appWritesEvery(reply);
      expect(reply.response).toBe(2);
      expect(world.dialog.calls.length, 'the host dialog was shown').toBe(calls);
      await expectNothingGranted('work');
      expect(tree(alice)).toEqual(before);
    });
  }

  it('SaveFile with a plain current_name is shown with that name and saves into the chosen folder', async () => {
    const calls = world.dialog.calls.length;
    const reply = await world.fileDialog('work', 'SaveFile', 'Save', { current_name: typed('s', 'letter.txt') });
    expect(reply.response).toBe(0);
    expect(world.dialog.calls.slice(calls)).toMatchObject([{ method: 'SaveFile', options: { current_name: 'letter.txt' } }]);
    appWritesEvery(reply);
    expect(readFileSync(path.join(folder, 'letter.txt'), 'utf8')).toBe('written by the VM');
  });
});

describe('the same names over a raw link, past the guest backend', () => {
  it('SaveFiles names that are not one path component get invalid-params, no dialog, no grant; the link stays up', async () => {
    const { link, request } = await rawLink('evil');
    const calls = world.dialog.calls.length;
    const before = tree(alice);
    let id = 1;
    for (const [what, names] of BAD_NAME_SETS) {
      const answer = await request(id++, { kind: 'save-files', title: 'Export', appId: '', options: { files: names() } });
      expect(answer, what).toMatchObject({ t: 'err', code: 'invalid-params' });
    }
    expect(world.dialog.calls.length, 'the host dialog was shown').toBe(calls);
    expect(link.closed).toBe(false);
    await expectNothingGranted('evil');
    expect(tree(alice)).toEqual(before);
    link.destroy();
  });

  it('SaveFile current_name that is not one path component gets invalid-params, no dialog, no grant', async () => {
    const { link, request } = await rawLink('evil');
    const calls = world.dialog.calls.length;
    let id = 1;
    for (const [what, name] of BAD_CURRENT_NAMES) {
      const answer = await request(id++, { kind: 'save', title: 'Save', appId: '', options: { current_name: name() } });
      expect(answer, what).toMatchObject({ t: 'err', code: 'invalid-params' });
    }
    expect(world.dialog.calls.length, 'the host dialog was shown').toBe(calls);
    await expectNothingGranted('evil');
    link.destroy();
  });

  it('one refused name fails that request only: the next good SaveFiles on the link is served', async () => {
    const { link, request } = await rawLink('evil');
    expect(await request(1, { kind: 'save-files', title: 'Export', appId: '', options: { files: ['../x'] } })).toMatchObject({ t: 'err', code: 'invalid-params' });
    const good = await request(2, { kind: 'save-files', title: 'Export', appId: '', options: { files: ['fine.txt'] } });
    expect(good).toMatchObject({ t: 'res', result: { response: 0 } });
    expect(await grantsOf('evil')).toMatchObject([{ hostPath: path.join(folder, 'fine.txt'), writable: true }]);
    link.destroy();
  });
});

describe('what the dialog returns must lie directly in the folder chosen', () => {
  it('a SaveFiles answer with a file outside the folder the others are in grants nothing', async () => {
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(folder, 'a.txt')).href, pathToFileURL(path.join(outside, 'b.txt')).href] }));
    const reply = await world.fileDialog('work', 'SaveFiles', 'Export', { files: bytesOf(['a.txt', 'b.txt']) });
    appWritesEvery(reply);
    expect(reply.response).toBe(2);
    await expectNothingGranted('work');
    expect(existsSync(path.join(outside, 'b.txt'))).toBe(false);
  });

  it('a SaveFiles answer naming a file the app did not ask for grants nothing', async () => {
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(folder, '.bashrc')).href] }));
    const reply = await world.fileDialog('work', 'SaveFiles', 'Export', { files: bytesOf(['notes.txt']) });
    appWritesEvery(reply);
    expect(reply.response).toBe(2);
    await expectNothingGranted('work');
  });

  it('a SaveFiles answer above the folder, as a missing name check would let GLib make it, grants nothing', async () => {
    // The names are fine; the dialog answers as if it had been given "../notes.txt".
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(folder, 'notes.txt')).href, pathToFileURL(path.resolve(folder, '..', 'todo.txt')).href] }));
    const reply = await world.fileDialog('work', 'SaveFiles', 'Export', { files: bytesOf(['notes.txt', 'todo.txt']) });
    appWritesEvery(reply);
    expect(reply.response).toBe(2);
    await expectNothingGranted('work');
    expect(existsSync(path.resolve(folder, '..', 'todo.txt'))).toBe(false);
  });

  it('a SaveFile answer of two files grants nothing', async () => {
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(folder, 'one.txt')).href, pathToFileURL(path.join(outside, 'two.txt')).href] }));
    const reply = await world.fileDialog('work', 'SaveFile', 'Save', { current_name: typed('s', 'one.txt') });
    appWritesEvery(reply);
    expect(reply.response).toBe(2);
    await expectNothingGranted('work');
  });

  it('over a raw link too: a SaveFiles answer outside the folder gets response 2 and grants nothing', async () => {
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(folder, 'a.txt')).href, pathToFileURL(path.join(outside, 'b.txt')).href] }));
    const { link, request } = await rawLink('evil');
    expect(await request(1, { kind: 'save-files', title: 'Export', appId: '', options: { files: ['a.txt', 'b.txt'] } })).toMatchObject({ t: 'res', result: { response: 2 } });
    await expectNothingGranted('evil');
    link.destroy();
  });
});

/**
 * The symlink rule: a grant never reaches a file the user did not see. A VM
 * with write access to a folder plants a link there under an innocent name;
 * the user later picks that name in a dialog. A path whose last component
 * is a symbolic link is refused (response 2, nothing granted, an audit line
 * that says why), and a save target's folder is opened without following a
 * link in its last component.
 */
describe('the symlink rule', () => {
  let shared: string;
  /** Where VM work sees the shared folder: its document view. */
  let sharedInVm: string;
  let folderDoc: string;
  let auditLinesBefore = 0;

  const auditLines = () => parseAuditLines(existsSync(world.auditFile) ? readFileSync(world.auditFile, 'utf8').split('\n') : []);

  beforeAll(async () => {
    shared = path.join(alice, 'Shared');
    mkdirSync(shared);
    writeFileSync(path.join(shared, 'plain.txt'), 'a plain file');
    // The user gave VM work this folder read-write some time ago (set up in the store directly).
    folderDoc = await store.grantExisting('work', shared, { write: true, directory: true });
    fixtures.add(folderDoc);
    sharedInVm = path.join(world.viewOf('work'), folderDoc, 'Shared');
    expect(readdirSync(sharedInVm)).toEqual(['plain.txt']);
  });

  beforeEach(() => {
    auditLinesBefore = auditLines().length;
  });

  /** The VM's documents other than the folder the user gave it. */
  const otherDocuments = async (vm: string) => (await store.documentsOf(vm)).filter((d) => d.id !== folderDoc);

  function expectAuditSaysSymlink(vm: string): void {
    const lines = auditLines().slice(auditLinesBefore).filter((l) => l.vm === vm);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ grant: null });
    expect(lines[0]!.decision).not.toBe('allow');
    expect(JSON.stringify(lines[0])).toMatch(/symbolic link|symlink/i);
  }

  it('the VM can plant a link in a folder it may write (the attack is real)', () => {
    symlinkSync('/etc/passwd', path.join(sharedInVm, 'innocent.txt'));
    expect(lstatSync(path.join(shared, 'innocent.txt')).isSymbolicLink()).toBe(true);
  });

  it('a regular file in that folder is still granted when the user opens it', async () => {
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(shared, 'plain.txt')).href] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Open');
    expect(reply.response).toBe(0);
    expect(readFileSync(fileURLToPath(urisOf(reply)[0]!), 'utf8')).toBe('a plain file');
  });

  it('a link the VM planted is refused when the user opens it: response 2, no document for its target, an audit line saying why', async () => {
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(shared, 'innocent.txt')).href] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Open');
    expect(reply.response).toBe(2);
    expect(await otherDocuments('work')).toEqual([]);
    expect((await grantsOf('work')).map((g) => g.hostPath)).toEqual([shared]);
    expect(readdirSync(world.viewOf('work'))).toEqual([folderDoc]);
    expectAuditSaysSymlink('work');
    expect(readFileSync('/etc/passwd', 'utf8')).toBe(passwd);
  });

  it('a link the VM planted over a save target is refused: SaveFile never writes through it', async () => {
    symlinkSync(secret, path.join(sharedInVm, 'report.txt'));
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(shared, 'report.txt')).href] }));
    const reply = await world.fileDialog('work', 'SaveFile', 'Save', { current_name: typed('s', 'report.txt') });
    appWritesEvery(reply);
    expect(reply.response).toBe(2);
    expect(await otherDocuments('work')).toEqual([]);
    expectAuditSaysSymlink('work');
    expect(readFileSync(secret, 'utf8')).toBe('the host user\'s secret');
  });

  it('a link the VM planted under a name SaveFiles asks for is refused: nothing is granted, the target is untouched', async () => {
    symlinkSync(secret, path.join(sharedInVm, 'export.csv'));
    world.dialog.behave((call) => ({ response: 0, uris: ((call.options.files as string[]) ?? []).map((n) => pathToFileURL(path.resolve(shared, n)).href) }));
    const reply = await world.fileDialog('work', 'SaveFiles', 'Export', { files: bytesOf(['summary.txt', 'export.csv']) });
    appWritesEvery(reply);
    expect(reply.response).toBe(2);
    expect(await otherDocuments('work')).toEqual([]);
    expectAuditSaysSymlink('work');
    expect(readFileSync(secret, 'utf8')).toBe('the host user\'s secret');
    expect(existsSync(path.join(shared, 'summary.txt'))).toBe(false);
  });

  it("a save target's folder is opened without following a link the VM planted as that folder", async () => {
    symlinkSync(outside, path.join(sharedInVm, 'Reports'));
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(shared, 'Reports', 'new.txt')).href] }));
    const reply = await world.fileDialog('work', 'SaveFile', 'Save', { current_name: typed('s', 'new.txt') });
    appWritesEvery(reply);
    // Soft, so a failure shows the whole escape: the answer, the document, the audit and the file written outside.
    expect.soft(reply.response).toBe(2);
    expect.soft(await otherDocuments('work')).toEqual([]);
    expect.soft(() => expectAuditSaysSymlink('work')).not.toThrow();
    expect.soft(readdirSync(outside)).toEqual(['secret.txt']);
  });

  it('over a raw link too: a planted link picked in OpenFile gets response 2 and no document', async () => {
    const evilShared = path.join(alice, 'EvilShared');
    mkdirSync(evilShared);
    const doc = await store.grantExisting('evil', evilShared, { write: true, directory: true });
    fixtures.add(doc);
    symlinkSync(secret, path.join(world.viewOf('evil'), doc, 'EvilShared', 'notes.txt'));
    world.dialog.behave(() => ({ response: 0, uris: [pathToFileURL(path.join(evilShared, 'notes.txt')).href] }));
    const { link, request } = await rawLink('evil');
    expect(await request(1, { kind: 'open', title: 'Open', appId: '', options: {} })).toMatchObject({ t: 'res', result: { response: 2 } });
    expect((await store.documentsOf('evil')).map((d) => d.id)).toEqual([doc]);
    expectAuditSaysSymlink('evil');
    link.destroy();
  });
});
