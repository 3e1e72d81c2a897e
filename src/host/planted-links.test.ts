import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { plantedLinkProblem } from './planted-links.js';

const root = mkdtempSync(path.join(tmpdir(), 'xdp-vm-links-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const shared = path.join(root, 'Shared');
const elsewhere = path.join(root, 'elsewhere');
const data = path.join(root, 'data', 'downloads');
for (const d of [shared, elsewhere, data]) mkdirSync(d, { recursive: true });
symlinkSync(elsewhere, path.join(shared, 'Reports'));
symlinkSync(data, path.join(root, 'Downloads'));
symlinkSync(shared, path.join(root, 'ShortcutToShared'));
const writable = async () => [{ vm: 'work', path: shared }];
const none = async () => [];
const at = (...p: string[]) => Buffer.from(path.join(root, ...p));

describe('links a VM could have planted', () => {
  it('refuses a path through a link inside a folder a VM can write, naming the VM', async () => {
    expect(await plantedLinkProblem(at('Shared', 'Reports', 'new.txt'), writable)).toMatch(/Reports is a symbolic link inside a folder VM "work" can write/);
  });

  it('judges a link by the real folder that holds it, however the path reached it', async () => {
    expect(await plantedLinkProblem(at('ShortcutToShared', 'Reports', 'new.txt'), writable)).toMatch(/VM "work" can write/);
  });

  it("follows the user's own links where no VM can write", async () => {
    expect(await plantedLinkProblem(at('Downloads', 'file.iso'), writable)).toBeUndefined();
    expect(await plantedLinkProblem(at('Shared', 'plain.txt'), writable)).toBeUndefined();
    expect(await plantedLinkProblem(at('Shared', 'Reports', 'new.txt'), none)).toBeUndefined();
  });

  it('asks which folders VMs can write only when the path meets a link', async () => {
    let asked = 0;
    await plantedLinkProblem(at('Shared', 'plain.txt'), async () => (asked++, []));
    expect(asked).toBe(0);
    await plantedLinkProblem(at('Downloads', 'file.iso'), async () => (asked++, []));
    expect(asked).toBe(1);
  });
});
