import { describe, expect, it } from 'vitest';
import type { Grant } from '../../src/host/documents.js';
import { guestPathToHost, guestUriOf, hostPathOfUri } from './paths.js';

const grantOf = (id: string, hostPath: string | Buffer): Grant => {
  const pathBytes = Buffer.from(hostPath);
  const nameBytes = pathBytes.subarray(pathBytes.lastIndexOf('/') + 1);
  return { vm: 'work', id, pathBytes, hostPath: pathBytes.toString(), nameBytes, name: nameBytes.toString(), writable: false };
};
const grants: Grant[] = [grantOf('abc123', '/home/alice/Reports/q3.pdf'), grantOf('dir999', '/home/alice/Photos'), grantOf('bin777', Buffer.from('/home/alice/caf\xe9 \xff.txt', 'latin1'))];
const docs = { lookup: async (vm: string, id: string) => grants.find((g) => g.vm === vm && g.id === id) };
const MOUNT = '/run/xdp-vm/doc';

describe('guest path translation', () => {
  it('maps a granted file, a path inside a granted folder, and a document folder', async () => {
    expect(await guestPathToHost(`${MOUNT}/abc123/q3.pdf`, 'work', MOUNT, docs)).toBe('/home/alice/Reports/q3.pdf');
    expect(await guestPathToHost(`${MOUNT}/dir999/Photos/2024/a.jpg`, 'work', MOUNT, docs)).toBe('/home/alice/Photos/2024/a.jpg');
    expect(await guestPathToHost(`${MOUNT}/abc123`, 'work', MOUNT + '/', docs)).toBe('/home/alice/Reports');
  });

  it('drops paths outside the share, other VMs\' documents, wrong names and escapes', async () => {
    for (const p of [
      '/home/alice/Reports/q3.pdf',
      `${MOUNT}`,
      `${MOUNT}-other/abc123/q3.pdf`,
      `${MOUNT}/unknown/q3.pdf`,
      `${MOUNT}/abc123/other.pdf`,
      `${MOUNT}/dir999/Photos/../../../etc/passwd`,
      `${MOUNT}/abc123/../dir999/../../../etc`,
      'relative/path',
      `${MOUNT}/abc123/q3.pdf\0x`,
    ]) {
      expect(await guestPathToHost(p, 'work', MOUNT, docs), p).toBeUndefined();
    }
    expect(await guestPathToHost(`${MOUNT}/abc123/q3.pdf`, 'shop', MOUNT, docs)).toBeUndefined();
  });

  it('builds guest URIs under the mount and percent-encodes names as GLib does, bytes that are not UTF-8 too', () => {
    expect(guestUriOf(grantOf('abc123', '/h/my report #1 ü.pdf'), MOUNT)).toBe('file:///run/xdp-vm/doc/abc123/my%20report%20%231%20%C3%BC.pdf');
    expect(guestUriOf(grants[2]!, MOUNT)).toBe('file:///run/xdp-vm/doc/bin777/caf%E9%20%FF.txt');
    expect(guestUriOf(grantOf('abc123', "/h/a+b=c&d'(e)~.txt"), MOUNT)).toBe("file:///run/xdp-vm/doc/abc123/a+b=c&d'(e)~.txt");
  });

  it('does not offer a granted host path that is not UTF-8 to the dialog', async () => {
    expect(await guestPathToHost(`${MOUNT}/bin777`, 'work', MOUNT, docs)).toBeUndefined();
  });

  it('accepts only local file URIs from the host dialog, as exact bytes', () => {
    expect(hostPathOfUri('file:///home/alice/a%20b.txt')).toEqual(Buffer.from('/home/alice/a b.txt'));
    expect(hostPathOfUri('file:///home/alice/caf%E9%20%FF.txt')).toEqual(Buffer.from('/home/alice/caf\xe9 \xff.txt', 'latin1'));
    expect(hostPathOfUri('file://localhost/x')).toEqual(Buffer.from('/x'));
    expect(hostPathOfUri('file:///x%00y')).toBeUndefined();
    expect(hostPathOfUri('file:///x%zz')).toBeUndefined();
    expect(hostPathOfUri('file://otherhost/x')).toBeUndefined();
    expect(hostPathOfUri('https://example.org/x')).toBeUndefined();
  });
});
