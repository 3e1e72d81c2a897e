import { describe, expect, it } from 'vitest';
import type { Grant } from '../../src/host/documents.js';
import { guestPathToHost, guestUriOf, hostPathOfUri } from './paths.js';

const grants: Grant[] = [
  { vm: 'work', id: 'abc123', hostPath: '/home/alice/Reports/q3.pdf', name: 'q3.pdf', writable: false },
  { vm: 'work', id: 'dir999', hostPath: '/home/alice/Photos', name: 'Photos', writable: false },
];
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

  it('builds guest URIs under the mount and percent-encodes names', () => {
    expect(guestUriOf({ ...grants[0]!, name: 'my report #1.pdf' }, MOUNT)).toBe('file:///run/xdp-vm/doc/abc123/my%20report%20%231.pdf');
  });

  it('accepts only local file URIs from the host dialog', () => {
    expect(hostPathOfUri('file:///home/alice/a%20b.txt')).toBe('/home/alice/a b.txt');
    expect(hostPathOfUri('file://otherhost/x')).toBeUndefined();
    expect(hostPathOfUri('https://example.org/x')).toBeUndefined();
  });
});
