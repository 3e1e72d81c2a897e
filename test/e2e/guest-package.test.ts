import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDebianPackages, COMMON_PACKAGE, GUEST_PACKAGE, type BuiltPackage } from '../../src/package/debian.js';
import { PACKAGE_PIN_DIR } from '../../src/package/guest-files.js';
import { packageRoot } from '../../src/paths.js';
import { defaultCacheDir, resolveModuleGroups } from '../../src/testbed/qemu/guest-image.js';
import { currentKernelPackage, ensureKernel } from '../../src/testbed/qemu/kernel.js';
import { GUEST_APP, GUEST_ENV, PORTAL_PORT, type AppResult } from '../../src/testbed/qemu/portal-vm.js';
import { bootGuest, checkoutPath, type Guest } from '../../src/testbed/qemu/vm.js';
import { QEMU_GUEST_MOUNT, World } from '../../src/testbed/world.js';

/**
 * The guest side installed the way a Debian user installs it: `dpkg -i` of
 * the .debs `npm run package` builds, into a real QEMU guest, with its
 * maintainer scripts run. The guest's root is the host's / read-only, so the
 * guest lays a writable overlay over it (tmpfs upper, the host's / below,
 * dpkg database included: nodejs and xdg-desktop-portal are installed there)
 * and chroots into that. Everything the round trip runs in the guest comes
 * from the package: the D-Bus activation file starts /usr/bin/xdp-vm guest,
 * the frontend is pinned by the postinst's portal folder (the host's
 * xdg-desktop-portal is 1.16), the mount agent is its unit's ExecStart, and
 * /etc/xdp-vm/guest.json is the package's conffile.
 */
const OVERLAY = '/tmp/xdp-vm-pkg';
const ROOT = `${OVERLAY}/root`;

let world: World;
let guest: Guest;
let debs: BuiltPackage[];
let outDir: string;
let files: string;

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** A script in the installed root, in the session's environment; throws on non-zero status. */
async function inRoot(script: string, timeoutMs = 60_000): Promise<string> {
  const r = await guest.agent.run(`chroot ${ROOT} /bin/sh -s <<'XDPVM_PKG_EOF'\n${GUEST_ENV}\n${script}\nXDPVM_PKG_EOF`, { timeoutMs });
  if (r.status !== 0) throw new Error(`guest: exit ${r.status}\n${script}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return r.stdout;
}

async function app(args: string[]): Promise<AppResult> {
  try {
    // As the guest's desktop user would, with the host user's uid (portal-vm.ts, PortalVm.app).
    const out = await inRoot(`XDP_VM_APP_USER=${world.user!.uid}:${world.user!.gid} node ${GUEST_APP} ${args.map(q).join(' ')}`, 120_000);
    return JSON.parse(out.trim().split('\n').at(-1)!) as AppResult;
  } catch (err) {
    const logs = await inRoot("tail -n 80 /run/pkg-session.log; tail -n 5 /run/pkg-mount-agent.log; ps -eo pid,args | grep -e portal -e xdp-vm | grep -v grep; true").catch((e: Error) => e.message);
    throw new Error(`${(err as Error).message}\n--- guest logs\n${logs}`, { cause: err });
  }
}

/** overlay.ko (and what it needs) from the guest kernel's modules, which the guest sees inside the checkout. */
async function overlayModules(): Promise<string[]> {
  const kernel = await ensureKernel(defaultCacheDir(), await currentKernelPackage());
  const files = (resolveModuleGroups(kernel.modulesDir, { overlay: ['overlay'] }).overlay ?? []).map((f) => path.join(kernel.modulesDir, f));
  const packed = files.find((f) => !f.endsWith('.ko'));
  if (packed) throw new Error(`${packed} is compressed; busybox insmod needs a plain .ko`);
  return files;
}

beforeAll(async () => {
  // Into the checkout, which the guest sees (its /tmp is its own).
  outDir = path.join(packageRoot(), 'build', `e2e-guest-package-${process.pid}`);
  debs = await buildDebianPackages({ outDir: path.join(outDir, 'deb'), workDir: path.join(outDir, 'work'), log: () => undefined });
  world = await World.start([{ name: 'work', label: 'Work', qemu: true }]);
  files = path.join(world.root, 'alice');
  world.hostDir(files);
  const paths = world.vmPaths('work');
  const handed = world.handVmSockets('work');
  guest = await bootGuest({
    name: 'work',
    rootPorts: 2,
    serialPorts: [{ name: PORTAL_PORT, socketPath: paths.portal }],
    extraQemuArgs: ['-qmp', `unix:${paths.qmp},server=on,wait=off`],
  }).finally(handed);
  const checkout = checkoutPath();
  await guest.agent.check(
    [
      'set -e',
      ...(await overlayModules()).map((m) => `grep -qw overlay /proc/filesystems || busybox insmod ${q(m)}`),
      `mkdir -p ${OVERLAY}/upper ${OVERLAY}/work ${ROOT}`,
      `mount -t overlay xdp-vm-pkg -o lowerdir=/,upperdir=${OVERLAY}/upper,workdir=${OVERLAY}/work ${ROOT}`,
      `mount --rbind /dev ${ROOT}/dev`,
      `mount -t proc proc ${ROOT}/proc`,
      `mount --rbind /sys ${ROOT}/sys`,
      `mount --bind /run ${ROOT}/run`,
      `mount -t tmpfs -o mode=1777 tmpfs ${ROOT}/tmp`,
      `mkdir -p ${ROOT}${checkout} && mount --bind ${checkout} ${ROOT}${checkout}`,
    ].join('\n'),
    { timeoutMs: 60_000 },
  );
}, 600_000);

afterAll(async () => {
  await guest?.shutdown().catch(() => undefined);
  await world?.stop();
  if (outDir) rmSync(outDir, { recursive: true, force: true });
});

describe('the guest package in a QEMU guest', () => {
  let install: string;

  it('installs with dpkg -i, its dependencies met by the guest, its postinst run', async () => {
    const deb = (name: string) => debs.find((d) => d.name === name)!.file;
    // --no-triggers: man-db's index and the like are not what is tested, and take minutes under TCG.
    install = await inRoot(`dpkg --no-triggers -i ${q(deb(COMMON_PACKAGE))} ${q(deb(GUEST_PACKAGE))} 2>&1`, 300_000);
    expect(install).toMatch(new RegExp(`Setting up ${GUEST_PACKAGE} \\(`));
    expect(await inRoot(`dpkg-query -W -f='\${Status}' ${GUEST_PACKAGE}`)).toBe('install ok installed');
    const version = (await inRoot("/usr/libexec/xdg-desktop-portal --version | sed 's/[^0-9.]//g'")).trim();
    if (!/^1\.1[0-6]\./.test(version)) return; // 1.17+ reads the shipped portals.conf: nothing to pin.
    expect(install).toContain('pinned the VM backend');
    expect(await inRoot(`cat ${PACKAGE_PIN_DIR}/vm.portal`)).toContain('org.freedesktop.impl.portal.FileChooser');
  }, 360_000);

  it("re-pins by its trigger when a backend goes: this headless guest has no display for xdg-desktop-portal-gtk's dialogs", async () => {
    // The host's gtk backend, seen through the overlay, cannot start without a display; under TCG each of the
    // frontend's failed attempts to start it costs seconds. A headless VM would not have it installed.
    const status = await inRoot("dpkg-query -W -f='${Status}' xdg-desktop-portal-gtk 2>/dev/null || true");
    if (!status.includes('installed')) return;
    const out = await inRoot(`dpkg --no-triggers --force-depends -r xdg-desktop-portal-gtk 2>&1 && dpkg --triggers-only ${GUEST_PACKAGE} 2>&1`, 300_000);
    expect(out).toMatch(new RegExp(`Processing triggers for ${GUEST_PACKAGE}`));
    const pinned = await inRoot(`ls ${PACKAGE_PIN_DIR} 2>/dev/null || true`);
    expect(pinned).not.toContain('gtk.portal');
  }, 360_000);

  it('starts the session from the installed files: the bus, the pinned frontend, the mount agent', async () => {
    await inRoot(
      [
        'set -e',
        'mkdir -p /run/home /run/user/0 /run/xdp-vm && chmod 700 /run/user/0',
        // What a systemd user session takes from the package: environment.d, and the frontend's drop-in when there is one.
        'set -a; . /etc/environment.d/60-xdp-vm.conf; set +a',
        'dropin=/etc/systemd/user/xdg-desktop-portal.service.d/xdp-vm.conf',
        'if [ -f $dropin ]; then export "$(sed -n "s/^Environment=//p" $dropin)"; fi',
        'export XDG_CURRENT_DESKTOP=guest',
        'dbus-daemon --session --address=unix:path=/run/user/0/bus --nofork --nopidfile > /run/pkg-session.log 2>&1 &',
        'for i in $(seq 100); do [ -S /run/user/0/bus ] && break; sleep 0.05; done',
        // As the package's system unit runs it.
        '$(sed -n "s/^ExecStart=//p" /lib/systemd/system/xdp-vm-mount.service) > /run/pkg-mount-agent.log 2>&1 &',
      ].join('\n'),
    );
  });

  it('OpenFile: the app in the guest reads the chosen host file, answered by the installed backend', async () => {
    const chosen = path.join(files, 'q3.txt');
    world.hostFile(chosen, 'Q3 numbers, through the packaged guest');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${chosen}`] }));
    const r = await app(['open', 'Open Report']);
    expect(r.response).toBe(0);
    expect(r.files).toEqual([expect.objectContaining({ path: expect.stringMatching(new RegExp(`^${QEMU_GUEST_MOUNT}/\\w+/q3\\.txt$`)), content: 'Q3 numbers, through the packaged guest' })]);
    expect(world.dialog.calls.at(-1)!.title).toBe('Work: Open Report');
    // The processes that answered are the package's, not this checkout's.
    const procs = await inRoot("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -e 'xdp-vm guest' -e 'xdp-vm mount-agent' | grep -v grep || true");
    expect(procs).toMatch(/\/usr\/bin\/xdp-vm guest/);
    expect(procs).toMatch(/\/usr\/bin\/xdp-vm mount-agent/);
    expect(procs).not.toContain(path.join(packageRoot(), 'dist'));
  }, 180_000);

  it("SaveFile: the host file holds the guest's bytes", async () => {
    const target = path.join(files, 'minutes.txt');
    world.dialog.behave(() => ({ response: 0, uris: [`file://${target}`] }));
    const r = await app(['save', 'Save Minutes', 'written by the packaged guest']);
    expect(r.response).toBe(0);
    expect(readFileSync(target, 'utf8')).toBe('written by the packaged guest');
    expect(existsSync(target)).toBe(true);
  }, 180_000);
});
