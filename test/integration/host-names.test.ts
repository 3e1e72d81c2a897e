import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { typed } from '../../src/dbus/values.js';
import { bytesOfFileUri, fileUriOfBytes } from '../../src/file-uri.js';
import type { DialogReply } from '../../src/testbed/world.js';
import { World } from '../../src/testbed/world.js';

/**
 * Names and paths that a real desktop produces, through the whole chain:
 * Linux file names are bytes, host paths run up to PATH_MAX, and Qt hides
 * its suggested save name in current_file.
 */
let world: World;
let files: string;

beforeAll(async () => {
  world = await World.start([{ name: 'work', label: 'Work' }]);
  files = path.join(world.root, 'alice');
  mkdirSync(files);
});
afterAll(async () => {
  await world?.stop();
});

const urisOf = (r: DialogReply) => (r.results.uris?.value as string[] | undefined) ?? [];

describe('names and paths a real desktop produces', () => {
  it('shares a file whose name is not UTF-8, with a URI encoded as GLib encodes it', async () => {
    const name = Buffer.from('caf\xe9 \xff.txt', 'latin1');
    const hostPath = Buffer.concat([Buffer.from(`${files}/`), name]);
    writeFileSync(hostPath, 'bytes, not text');
    world.dialog.behave(() => ({ response: 0, uris: [fileUriOfBytes(hostPath)] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Open');
    expect(reply.response).toBe(0);
    const [uri] = urisOf(reply);
    expect(uri).toMatch(/\/caf%E9%20%FF\.txt$/);
    expect(readFileSync(bytesOfFileUri(uri!)!, 'utf8')).toBe('bytes, not text');
    const listed = JSON.parse((await world.cli(['grants', 'work', '--json'])).stdout) as { hostPath: string }[];
    expect(listed.map((g) => g.hostPath)).toContain(`${files}/caf\\xe9 \\xff.txt`);
  });

  it('shares a file at a host path of over 3,000 bytes, whose URI is three times that', async () => {
    let dir = files;
    while (Buffer.byteLength(dir) < 3300) dir = path.join(dir, 'é'.repeat(100));
    mkdirSync(dir, { recursive: true });
    const hostPath = path.join(dir, 'deep.txt');
    writeFileSync(hostPath, 'far down');
    const hostUri = fileUriOfBytes(Buffer.from(hostPath));
    expect(hostUri.length).toBeGreaterThan(9000);
    world.dialog.behave(() => ({ response: 0, uris: [hostUri] }));
    const reply = await world.fileDialog('work', 'OpenFile', 'Open');
    expect(reply.response).toBe(0);
    expect(readFileSync(bytesOfFileUri(urisOf(reply)[0]!)!, 'utf8')).toBe('far down');
  });

  it('passes the name of a dropped current_file on as current_name, as Qt needs', async () => {
    world.dialog.behave(() => ({ response: 1 }));
    await world.fileDialog('work', 'SaveFile', 'Save', { current_file: typed('ay', Buffer.from('/home/user/report.txt\0')) });
    const asked = world.dialog.calls.at(-1)!.options;
    expect(asked).toMatchObject({ current_name: 'report.txt' });
    expect(asked).not.toHaveProperty('current_file');
  });

  it('names the VM on the accept button of every dialog', async () => {
    world.dialog.behave(() => ({ response: 1 }));
    for (const method of ['OpenFile', 'SaveFile', 'SaveFiles'] as const) {
      await world.fileDialog('work', method, 'x', method === 'SaveFiles' ? { files: typed('aay', [Buffer.from('a.txt\0')]) } : {});
      expect(world.dialog.calls.at(-1)!.options.accept_label).toMatch(/ \(Work\)$/);
    }
  });
});
