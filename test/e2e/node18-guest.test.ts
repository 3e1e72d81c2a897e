import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliEntry, packageRoot } from '../../src/paths.js';
import { QEMU_GUEST_MOUNT, World } from '../../src/testbed/world.js';
import { bootPortalVm, type PortalVm } from '../../src/testbed/qemu/portal-vm.js';
import { cachedDebianNode18, debianNode18Version, ensureDebianNode18, node18GuestScript, overlayModules, type DebianNode18 } from '../../src/testbed/qemu/debian-node18.js';

/**
 * The guest half on Debian 12's own nodejs 18 (18.20.4+dfsg-1~deb12u*, with
 * libnode108, libc-ares2 and the builtins Debian keeps in /usr/share/nodejs),
 * in a QEMU guest that looks like a Debian 12 machine after `apt-get install
 * nodejs`: install-guest, the D-Bus activated backend, the root mount agent
 * and the app all run /usr/bin/node, which is that node 18 there; the host
 * half stays on the host's node. The FileChooser round trip must work, and
 * each guest process is checked to really be node 18 with the addon loaded.
 */
const GUEST_NODE = '/usr/bin/node';
const CLI = cliEntry();
const BACKEND = 'org.freedesktop.impl.portal.desktop.vm';

/** Why this host cannot run the test: Debian 12's nodejs 18 must be cached, or known to apt (a Debian 12 host). */
async function unavailable(): Promise<string | undefined> {
  if (process.arch !== 'x64') return `the e2e guests are x86_64 and this machine is ${process.arch}`;
  if (cachedDebianNode18()) return undefined;
  try {
    if (await debianNode18Version()) return undefined;
  } catch (err) {
    return `apt-cache failed: ${(err as Error).message}`;
  }
  return "apt knows no nodejs 18.x: this host's apt sources are not Debian 12's";
}
const why = await unavailable();
if (why) console.warn(`node18-guest: skipped: ${why}`);

let world: World;
let vm: PortalVm;
let n18: DebianNode18;
let files: string;

beforeAll(async () => {
  if (why) return;
  n18 = await ensureDebianNode18();
  const modules = await overlayModules();
  world = await World.start([{ name: 'work', label: 'Work', qemu: true }]);
  files = path.join(world.root, 'alice');
  world.hostDir(files);
  vm = await bootPortalVm(world, 'work', { node: GUEST_NODE, prepare: node18GuestScript(n18, modules) });
});
afterAll(async () => {
  await vm?.shutdown().catch(() => vm.guest.cleanup());
  await world?.stop();
});

interface GuestProcess {
  pid: number;
  /** What /proc/<pid>/exe, run with --version, says. */
  version: string;
  /** Shared objects of interest mapped into the process. */
  mapped: string[];
}

/** The oldest guest process whose command line matches `pattern`, and what it runs. */
async function guestProcess(pattern: string): Promise<GuestProcess> {
  const out = await vm.sh(
    [
      `pid=$(pgrep -o -f '${pattern}')`,
      'echo "$pid"',
      '"/proc/$pid/exe" --version',
      "grep -oE '(libnode\\.so\\.[0-9]+|vsock\\.node)$' \"/proc/$pid/maps\" | sort -u | tr '\\n' ' '",
    ].join('\n'),
  );
  const [pid = '', version = '', mapped = ''] = out.split('\n');
  return { pid: Number(pid), version: version.trim(), mapped: mapped.trim().split(/\s+/).filter(Boolean) };
}

function hostFile(name: string, content: string): string {
  return world.hostFile(path.join(files, name), content);
}

describe.skipIf(why !== undefined)('the guest half on Debian 12\'s nodejs 18', () => {
  it('the guest\'s /usr/bin/node is Debian 12\'s nodejs 18, with its externalised builtins', async () => {
    expect(n18.nodeVersion).toMatch(/^v18\.20\./);
    // Dependencies this host has installed are not fetched: the guest's / is the host's.
    expect(n18.packages.map((p) => p.package)).toEqual(expect.arrayContaining(['libnode108', 'nodejs']));
    const out = await vm.sh(`${GUEST_NODE} -p 'process.version + " napi " + process.versions.napi + " " + process.release.name'`);
    expect(out.trim()).toBe(`${n18.nodeVersion} napi 9 node`);
    // A builtin Debian keeps outside the binary: Headers is undici, from /usr/share/nodejs/undici.
    expect((await vm.sh(`${GUEST_NODE} -p 'new Headers({ via: "undici" }).get("via")' 2>/dev/null`)).trim()).toBe('undici');
  });

  it('D-Bus activation starts the backend with the node 18 command line install-guest wrote', async () => {
    const service = await vm.sh('cat /run/gi/usr/share/dbus-1/services/org.freedesktop.impl.portal.desktop.vm.service');
    expect(service).toContain(`Exec=${GUEST_NODE} ${CLI} guest`);
    // Activated here, ahead of the first dialog, so that a busy TCG guest's slow first start
    // does not run into the app's 20 s Ping of the frontend (which waits for its backends).
    await vm.sh(
      [
        `dbus-send --session --print-reply --reply-timeout=180000 --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.StartServiceByName string:${BACKEND} uint32:0 > /dev/null || true`,
        `for i in $(seq 360); do dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.NameHasOwner string:${BACKEND} | grep -q 'boolean true' && break; sleep 0.5; done`,
        'dbus-send --session --print-reply --reply-timeout=180000 --dest=org.freedesktop.portal.Desktop /org/freedesktop/portal/desktop org.freedesktop.DBus.Peer.Ping > /dev/null',
      ].join('\n'),
      240_000,
    );
    expect(await guestProcess('xdp-vm.mjs guest')).toMatchObject({ version: n18.nodeVersion, mapped: expect.arrayContaining(['libnode.so.108']) });
  });

  let opened: string;

  it('OpenFile: the app reads the chosen host file, the backend and the mount agent both on node 18 with the addon', async () => {
    const chosen = hostFile('q3.txt', 'Q3 numbers, read under node 18');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${chosen}`] }));
    const r = await vm.app(['open', 'Open Report']);
    expect(r.response).toBe(0);
    expect(r.files).toEqual([expect.objectContaining({ path: expect.stringMatching(new RegExp(`^${QEMU_GUEST_MOUNT}/\\w+/q3\\.txt$`)), content: 'Q3 numbers, read under node 18' })]);
    opened = r.files[0]!.path;
    expect(world.dialog.calls.at(-1)!.title).toBe('Work: Open Report');
    expect(await vm.sh(`grep ' ${QEMU_GUEST_MOUNT} ' /proc/mounts`)).toMatch(/^xdp-vm-doc \/run\/xdp-vm\/doc virtiofs /);

    // The backend was started by D-Bus activation; it reached the host over
    // virtio-serial, which it opens through the addon.
    const backend = await guestProcess('xdp-vm.mjs guest');
    expect(backend).toMatchObject({ version: n18.nodeVersion, mapped: ['libnode.so.108', 'vsock.node'] });
    // The mount agent mounted the share with the addon's mount(2).
    const agent = await guestProcess('xdp-vm.mjs mount-agent');
    expect(agent).toMatchObject({ version: n18.nodeVersion, mapped: ['libnode.so.108', 'vsock.node'] });
    expect(agent.pid).not.toBe(backend.pid);
    // Node 18 says so on stderr when something is experimental or deprecated there: nothing is.
    const stderr = await vm.sh('cat /run/install-guest.log /run/mount-agent.log /run/session.log');
    expect(stderr).not.toMatch(/\(node:\d+\) (\[\w+\] )?\w*Warning/);
  });

  it('SaveFile: the host file holds the bytes the guest app wrote', async () => {
    const target = path.join(files, 'minutes.txt');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${target}`] }));
    const r = await vm.app(['save', 'Save Minutes', 'written inside the guest under node 18']);
    expect(r.response).toBe(0);
    expect(world.dialog.calls.at(-1)).toMatchObject({ method: 'SaveFile', title: 'Work: Save Minutes', options: { current_name: 'from-guest.txt' } });
    expect(readFileSync(target, 'utf8')).toBe('written inside the guest under node 18');
    expect(await guestProcess('xdp-vm.mjs guest')).toMatchObject({ version: n18.nodeVersion });
  });

  it('revoke: the document is gone from the guest at once', async () => {
    expect(await vm.sh(`cat ${opened}`)).toBe('Q3 numbers, read under node 18');
    await world.cli(['grants', 'revoke', 'work', path.basename(path.dirname(opened))]);
    expect(await vm.sh(`cat ${opened} 2>&1 || echo "status $?"`)).toMatch(/No such file or directory\s+status 1/);
  });

  it('the AF_VSOCK addon, built against the host\'s node 20 headers, works under node 18: listen, connect, peer CID, frames at the cap', async () => {
    const out = await vm.sh(`${GUEST_NODE} ${path.join(packageRoot(), 'dist', 'scripts', 'vsock-selftest.js')}`, 120_000);
    expect(JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>).toMatchObject({ ok: true });
  });
});
