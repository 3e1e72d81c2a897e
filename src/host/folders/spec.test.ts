import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultFolderName, FolderName, folderNameOfTag, folderRefusal, folderTag, type FolderShare } from './spec.js';
import { FolderStore } from './store.js';

const ctx = (shares: FolderShare[] = []) => ({ home: '/home/alice', documentStore: '/run/user/1000/doc', shares });
const ok = { readOnly: false, force: false };
const photos: FolderShare = { vm: 'shop', name: 'photos', path: '/home/alice/Photos', readOnly: true };

describe('which folders a VM may get', () => {
  it('refuses /, system folders, /var, the document store and the home folder as a whole, each saying why', () => {
    expect(folderRefusal('work', 'x', '/', ok, ctx())).toMatch(/"\/" is the whole host file system/);
    expect(folderRefusal('work', 'x', '/etc', ok, ctx())).toMatch(/under \/etc, a system folder/);
    expect(folderRefusal('work', 'x', '/proc/1', ok, ctx())).toMatch(/under \/proc/);
    expect(folderRefusal('work', 'x', '/run/user/1000', ok, ctx())).toMatch(/under \/run/);
    expect(folderRefusal('work', 'x', '/var/tmp/x', ok, ctx())).toMatch(/under \/var, which the unprivileged virtiofsd cannot serve/);
    expect(folderRefusal('work', 'x', '/run/user/1000/doc/by-app', ok, { ...ctx(), documentStore: '/home/alice/doc' })).toMatch(/under \/run/);
    expect(folderRefusal('work', 'x', '/home/alice/doc', ok, { ...ctx(), documentStore: '/home/alice/doc' })).toMatch(/is the document store's own mount/);
    expect(folderRefusal('work', 'x', '/home/alice/doc/abc', ok, { ...ctx(), documentStore: '/home/alice/doc' })).toMatch(/is inside the document store's own mount/);
    expect(folderRefusal('work', 'x', '/home/alice', ok, ctx())).toMatch(/is your whole home folder.*--force/);
    expect(folderRefusal('work', 'x', '/home', ok, ctx())).toMatch(/holds your whole home folder \(\/home\/alice\)/);
  });

  it('lets a folder of the user\'s through, the home folder only with force, and removable media under /run/media', () => {
    expect(folderRefusal('work', 'x', '/home/alice/Projects', ok, ctx())).toBeUndefined();
    expect(folderRefusal('work', 'x', '/home/alice', { readOnly: false, force: true }, ctx())).toBeUndefined();
    expect(folderRefusal('work', 'x', '/run/media/alice/USB', ok, ctx())).toBeUndefined();
    expect(folderRefusal('work', 'x', '/home/alice/doc-notes', ok, { ...ctx(), documentStore: '/home/alice/doc' })).toBeUndefined();
  });

  it('one folder goes to one VM: another VM\'s share, inside it or around it, is refused; a name or a folder twice in one VM too', () => {
    expect(folderRefusal('work', 'x', '/home/alice/Photos', ok, ctx([photos]))).toMatch(/overlaps VM "shop"'s share "photos"/);
    expect(folderRefusal('work', 'x', '/home/alice/Photos/2026', ok, ctx([photos]))).toMatch(/overlaps VM "shop"/);
    expect(folderRefusal('work', 'x', '/home/alice', { readOnly: false, force: true }, ctx([photos]))).toMatch(/overlaps VM "shop"/);
    expect(folderRefusal('work', 'x', '/home/alice/Photos-old', ok, ctx([photos]))).toBeUndefined();
    expect(folderRefusal('shop', 'photos', '/home/alice/Other', ok, ctx([photos]))).toMatch(/already has a share named "photos"/);
    expect(folderRefusal('shop', 'pics', '/home/alice/Photos', ok, ctx([photos]))).toMatch(/already has \/home\/alice\/Photos, as share "photos"/);
    // The same VM may have a folder inside one of its own: it could reach it anyway.
    expect(folderRefusal('shop', 'y', '/home/alice/Photos/2026', ok, ctx([photos]))).toBeUndefined();
  });
});

describe('share names', () => {
  it('are single path components that fit a virtiofs tag', () => {
    for (const bad of ['', '..', '.', 'a/b', 'A', '-x', 'x'.repeat(25), 'é', 'a b']) expect(FolderName.safeParse(bad).success, bad).toBe(false);
    expect(FolderName.safeParse('photos-2026').success).toBe(true);
    expect(Buffer.byteLength(folderTag('x'.repeat(24)))).toBeLessThanOrEqual(36);
    expect(folderNameOfTag(folderTag('photos'))).toBe('photos');
    expect(folderNameOfTag('xdpvm-doc')).toBeUndefined();
  });

  it('come from the folder\'s own name when none is given', () => {
    expect(defaultFolderName('/home/alice/Photos 2026')).toBe('photos-2026');
    expect(defaultFolderName('/home/alice/.config')).toBe('config');
    expect(defaultFolderName('/home/alice/Ünïcode')).toBe('n-code');
    expect(defaultFolderName('/home/alice/日本')).toBe('folder');
    expect(FolderName.safeParse(defaultFolderName(`/x/${'a'.repeat(40)}`)).success).toBe(true);
  });
});

describe('the folder-share store', () => {
  const dir = () => mkdtempSync(path.join(tmpdir(), 'xdp-vm-folders-'));

  it('persists shares across loads, written whole', () => {
    const file = path.join(dir(), 'folder-shares.json');
    const a = new FolderStore(file).load();
    expect(a.all()).toEqual([]);
    a.add(photos);
    a.add({ ...photos, vm: 'work', name: 'docs', path: '/home/alice/Docs', readOnly: false });
    const b = new FolderStore(file).load();
    expect(b.of('shop')).toEqual([photos]);
    expect(b.remove('shop', 'photos')).toBe(true);
    expect(b.remove('shop', 'photos')).toBe(false);
    expect(new FolderStore(file).load().all().map((s) => s.name)).toEqual(['docs']);
  });

  it('a broken file is said precisely, serves nothing and is never overwritten', () => {
    const file = path.join(dir(), 'folder-shares.json');
    writeFileSync(file, '{"version":1,"shares":[{"vm":"work","name":"../x","path":"/tmp","readOnly":false}]}');
    const s = new FolderStore(file).load();
    expect(s.problem).toMatch(/shares\.0\.name: a share name is/);
    expect(s.all()).toEqual([]);
    expect(() => s.add(photos)).toThrow(/folder shares cannot change: .*no folder shares are served until it is fixed/);
    writeFileSync(file, '{"version":1,');
    expect(new FolderStore(file).load().problem).toMatch(/is not valid JSON/);
    expect(readFileSync(file, 'utf8')).toBe('{"version":1,');
  });
});
