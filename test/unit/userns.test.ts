import { describe, expect, it } from 'vitest';
import { runProgram } from '../../src/exec.js';
import { READ_ONLY_SCRIPT, UNPRIVILEGED_SCRIPT, readOnlyRootCommand, unprivilegedCommand } from '../../src/host/virtiofsd.js';
import {
  freeSubIdRange,
  idMap,
  mapArgs,
  namespaceMaps,
  pickRange,
  subIdFix,
  subIdRanges,
  usernsChecks,
  UserNamespaceError,
  type UsernsFacts,
} from '../../src/host/userns.js';

const alice = { name: 'alice', uid: 1000, gid: 1000 };
const SUBUID = '# a comment\nbob:165536:65536\nalice:100000:65536\n\n1000:300000:10\nbroken:line\ncarol:x:5\n';

describe('subordinate ids', () => {
  it('finds a user\'s ranges by name and by number, in file order, and skips what it cannot read', () => {
    expect(subIdRanges(SUBUID, { name: 'alice', id: 1000 })).toEqual([
      { start: 100000, count: 65536 },
      { start: 300000, count: 10 },
    ]);
    expect(subIdRanges(SUBUID, { name: 'carol', id: 1002 })).toEqual([]);
    expect(subIdRanges('', { name: 'alice', id: 1000 })).toEqual([]);
  });

  it('maps from the first range that covers the namespace, else the biggest', () => {
    expect(pickRange([{ start: 300000, count: 10 }, { start: 100000, count: 65536 }])).toEqual({ start: 100000, count: 65536 });
    expect(pickRange([{ start: 1, count: 10 }, { start: 50, count: 20 }])).toEqual({ start: 50, count: 20 });
    expect(pickRange([])).toBeUndefined();
  });

  it('suggests a free block above every range either file has, and the usermod line that adds it', () => {
    expect(freeSubIdRange('', '')).toEqual({ start: 100000, count: 65536 });
    expect(freeSubIdRange(SUBUID, 'dave:100000:1000\n')).toEqual({ start: 231072, count: 65536 });
    expect(subIdFix('alice', '', '')).toBe('sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 alice');
  });
});

describe('the namespace\'s id map', () => {
  it('keeps the user\'s own id and fills 0..65535 around it from the subordinate range', () => {
    const lines = idMap(1000, { start: 100000, count: 65536 });
    expect(lines).toEqual([
      { inside: 0, outside: 100000, count: 1000 },
      { inside: 1000, outside: 1000, count: 1 },
      { inside: 1001, outside: 101000, count: 64535 },
    ]);
    expect(lines.reduce((n, l) => n + l.count, 0)).toBe(65536);
    expect(mapArgs(lines)).toEqual(['0', '100000', '1000', '1000', '1000', '1', '1001', '101000', '64535']);
  });

  it('maps what a short range allows, and an own id above 65535 on its own', () => {
    expect(idMap(1000, { start: 100000, count: 1500 })).toEqual([
      { inside: 0, outside: 100000, count: 1000 },
      { inside: 1000, outside: 1000, count: 1 },
      { inside: 1001, outside: 101000, count: 500 },
    ]);
    expect(idMap(70000, { start: 100000, count: 65536 })).toEqual([
      { inside: 0, outside: 100000, count: 65536 },
      { inside: 70000, outside: 70000, count: 1 },
    ]);
  });

  it('refuses, with the fix, when a user has no range, or its own id lies inside it', () => {
    expect(namespaceMaps(alice, SUBUID, SUBUID)).toMatchObject({ uid: [{ inside: 0, outside: 100000 }, { inside: 1000, outside: 1000 }, {}] });
    expect(() => namespaceMaps(alice, undefined, SUBUID)).toThrow(UserNamespaceError);
    expect(() => namespaceMaps(alice, undefined, SUBUID)).toThrow(/alice has no subordinate uid range in \/etc\/subuid.*run: sudo usermod --add-subuids 231072-296607 --add-subgids 231072-296607 alice/);
    expect(() => namespaceMaps(alice, SUBUID, 'bob:1:2\n')).toThrow(/no subordinate gid range in \/etc\/subgid/);
    expect(() => namespaceMaps(alice, 'alice:0:65536\n', SUBUID)).toThrow(/own uid 1000 lies inside its subordinate uid range 0\+65536/);
  });
});

describe('the namespace\'s shell', () => {
  it('is valid sh and gets every value as a parameter, virtiofsd\'s own command line last', async () => {
    await runProgram('/bin/sh', ['-n', '-c', UNPRIVILEGED_SCRIPT]);
    const [file, args] = unprivilegedCommand({ unshare: '/usr/bin/unshare', setpriv: '/usr/bin/setpriv', mount: '/usr/bin/mount' }, '/run/user/1000/xdp-vm/virtiofsd-var', '/usr/lib/qemu/virtiofsd', ['--socket-path=/s', '-o', 'source=/d']);
    expect(file).toBe('/usr/bin/unshare');
    expect(args.slice(0, 6)).toEqual(['--user', '--mount', '--propagation', 'private', '--keep-caps', '--']);
    expect(args.slice(-8)).toEqual(['/run/user/1000/xdp-vm/virtiofsd-var', '/usr/bin/setpriv', '/usr/bin/mount', '', '/usr/lib/qemu/virtiofsd', '--socket-path=/s', '-o', 'source=/d']);
    expect(UNPRIVILEGED_SCRIPT).not.toMatch(/\/run\/user|virtiofsd-var/);
  });

  it('a read-only share names its source as the one to bind read-only; the root variant is valid sh too', async () => {
    const [, args] = unprivilegedCommand({ unshare: '/usr/bin/unshare', setpriv: '/usr/bin/setpriv', mount: '/usr/bin/mount' }, '/v', '/usr/lib/qemu/virtiofsd', ['-o', 'source=/d'], '/d');
    expect(args.slice(-4)).toEqual(['/d', '/usr/lib/qemu/virtiofsd', '-o', 'source=/d']);
    await runProgram('/bin/sh', ['-n', '-c', READ_ONLY_SCRIPT]);
    const [file, rootArgs] = readOnlyRootCommand({ unshare: '/usr/bin/unshare', mount: '/usr/bin/mount' }, '/d', '/usr/lib/qemu/virtiofsd', ['-o', 'source=/d']);
    expect(file).toBe('/usr/bin/unshare');
    expect(rootArgs.slice(0, 4)).toEqual(['--mount', '--propagation', 'private', '--']);
    expect(rootArgs.slice(-5)).toEqual(['/usr/bin/mount', '/d', '/usr/lib/qemu/virtiofsd', '-o', 'source=/d']);
  });
});

describe('doctor\'s checks for an unprivileged virtiofsd', () => {
  const good: UsernsFacts = {
    user: alice,
    subuid: 'alice:100000:65536\n',
    subgid: 'alice:100000:65536\n',
    unprivilegedUsernsClone: '1\n',
    maxUserNamespaces: '63704\n',
    apparmorRestrict: undefined,
    fuseUsable: true,
    fuseExists: true,
  };
  const failing = (f: Partial<UsernsFacts>) => usernsChecks({ ...good, ...f }).filter((c) => !c.ok);

  it('passes on a stock Debian 12 with the user\'s ranges', () => {
    expect(failing({})).toEqual([]);
    expect(usernsChecks(good).map((c) => c.what)).toEqual([
      expect.stringMatching(/^subordinate uids for alice in \/etc\/subuid/),
      expect.stringMatching(/^subordinate gids for alice in \/etc\/subgid/),
      'unprivileged user namespaces (kernel.unprivileged_userns_clone)',
      'user namespaces allowed (user.max_user_namespaces > 0)',
      expect.stringMatching(/^FUSE device \/dev\/fuse usable by alice/),
    ]);
  });

  it('prints usermod for missing or short ranges', () => {
    expect(failing({ subuid: undefined, subgid: 'bob:100000:65536\n' })).toEqual([
      expect.objectContaining({ what: expect.stringMatching(/subordinate uids/), fix: 'sudo usermod --add-subuids 165536-231071 --add-subgids 165536-231071 alice' }),
      expect.objectContaining({ what: expect.stringMatching(/subordinate gids/), fix: 'sudo usermod --add-subuids 165536-231071 --add-subgids 165536-231071 alice' }),
    ]);
    expect(failing({ subuid: 'alice:100000:1000\n' })).toEqual([expect.objectContaining({ found: '100000+1000', fix: expect.stringMatching(/^only 1000 ids: guest uids above 1000 would be unmapped; sudo usermod --add-subuids 165536-231071/) })]);
  });

  it('flags a range that contains the user\'s own id', () => {
    expect(failing({ subgid: 'alice:0:65536\n' })).toEqual([expect.objectContaining({ what: expect.stringMatching(/subordinate gids/), fix: expect.stringMatching(/contains alice's own gid 1000, which newuidmap refuses; replace it: sudo usermod/) })]);
  });

  it('prints the sysctl for each way user namespaces can be off', () => {
    expect(failing({ unprivilegedUsernsClone: '0\n' })).toEqual([expect.objectContaining({ found: '0', fix: expect.stringMatching(/^sudo sysctl -w kernel.unprivileged_userns_clone=1/) })]);
    expect(failing({ unprivilegedUsernsClone: undefined }).length).toBe(0);
    expect(failing({ maxUserNamespaces: '0\n' })).toEqual([expect.objectContaining({ fix: expect.stringMatching(/^sudo sysctl -w user.max_user_namespaces=15000/) })]);
    expect(failing({ maxUserNamespaces: undefined })).toEqual([expect.objectContaining({ fix: expect.stringMatching(/CONFIG_USER_NS/) })]);
    expect(failing({ apparmorRestrict: '1\n' })).toEqual([expect.objectContaining({ what: expect.stringMatching(/AppArmor/), fix: expect.stringMatching(/apparmor_restrict_unprivileged_userns=0/) })]);
    expect(failing({ apparmorRestrict: '0\n' })).toEqual([]);
  });

  it('says how to make /dev/fuse usable, or present', () => {
    expect(failing({ fuseUsable: false })).toEqual([expect.objectContaining({ fix: expect.stringMatching(/sudo chmod 0666 \/dev\/fuse/) })]);
    expect(failing({ fuseUsable: false, fuseExists: false })).toEqual([expect.objectContaining({ fix: expect.stringMatching(/apt-get install fuse3.*modprobe fuse/) })]);
  });
});

describe('the Node.js each side of doctor asks for', () => {
  it('admits Debian 12 nodejs 18.20 in a guest, and needs 20.19 on the host', async () => {
    const { nodeCheck } = await import('../../src/cli/verb-doctor.js');
    expect(nodeCheck('guest', '18.20.4').ok).toBe(true);
    expect(nodeCheck('guest', '18.19.1').ok).toBe(false);
    expect(nodeCheck('guest', '20.18.0').ok).toBe(false);
    expect(nodeCheck('host', '18.20.4').ok).toBe(false);
    expect(nodeCheck('host', '20.19.0').ok).toBe(true);
    expect(nodeCheck('all', '22.1.0').ok).toBe(true);
  });
});
