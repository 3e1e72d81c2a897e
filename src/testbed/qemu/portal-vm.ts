import path from 'node:path';
import { cliEntry, packageRoot } from '../../paths.js';
import type { World } from '../world.js';
import { bootGuest, type BootGuestOptions, type Guest } from './vm.js';

/**
 * A QEMU guest set up the way a user's VM would be, from the guest's own
 * side: `xdp-vm install-guest` writes the guest files (into /run/gi, since the
 * guest's root is the host's read-only /), a session bus activates the stock
 * xdg-desktop-portal and our backend from them, and the mount agent runs as
 * root. The host side is `world`'s daemon, reached over virtio-serial and QMP.
 */
export const PORTAL_PORT = 'io.github.xdp_vm.portal';
const NODE = process.execPath;
const CLI = cliEntry();
export const GUEST_APP = path.join(packageRoot(), 'dist', 'src', 'testbed', 'qemu', 'guest-app.js');

export const GUEST_ENV = [
  'export HOME=/run/home XDG_RUNTIME_DIR=/run/user/0 DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/0/bus',
  'export XDP_VM_LOG_LEVEL=debug PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
].join('\n');

const BUS_CONF = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=/run/user/0/bus</listen>
  <servicedir>/run/gi/usr/share/dbus-1/services</servicedir>
  <servicedir>/usr/share/dbus-1/services</servicedir>
  <auth>EXTERNAL</auth>
  <policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
</busconfig>`;

export interface AppResult {
  response: number;
  ms: number;
  /** When the app called and got its answer, on the guest's clock (epoch ms). */
  t0: number;
  t1: number;
  files: { path: string; content?: string; readMs?: number; error?: string }[];
}

export interface PortalVm {
  name: string;
  guest: Guest;
  /** A shell script in the guest session's environment; throws on non-zero status. */
  sh(script: string, timeoutMs?: number): Promise<string>;
  /**
   * Run the guest app (guest-app.ts). It touches the chosen files as the
   * guest's desktop user would: with the uid and gid of the host user whose
   * session serves the VM (a guest's first user 1000 is a host's first user
   * 1000), which is whom the user's unprivileged virtiofsd lets create files
   * (src/host/userns.ts). `asRoot`: as the guest's root instead.
   */
  app(args: string[], opts?: { asRoot?: boolean }): Promise<AppResult>;
  shutdown(): Promise<void>;
}

function quote(a: string): string {
  return `'${a.replace(/'/g, `'\\''`)}'`;
}

/**
 * Install the guest side, start the session bus and the mount agent, all with
 * `node` (a path in the guest; default the host's own node).
 */
export function guestSetupScript(node: string = NODE): string {
  return [
    'set -e',
    'mkdir -p /run/home /run/user/0 /run/xdp-vm && chmod 700 /run/user/0',
    "version=$(/usr/libexec/xdg-desktop-portal --version | sed 's/[^0-9.]//g')",
    `${node} ${CLI} install-guest --root /run/gi --portal-version "$version" --command ${quote(`${node} ${CLI}`)} --mount-point /run/xdp-vm/doc > /run/install-guest.log`,
    `printf '%s\\n' ${quote(BUS_CONF)} > /run/bus.conf`,
    // The session's activation environment, as the install's systemd drop-in and environment.d give it.
    'XDG_DESKTOP_PORTAL_DIR=/run/gi/usr/local/share/xdp-vm/portals XDG_CURRENT_DESKTOP=guest GTK_USE_PORTAL=1 \\',
    '  dbus-daemon --config-file=/run/bus.conf --nofork --nopidfile > /run/session.log 2>&1 &',
    'for i in $(seq 100); do [ -S /run/user/0/bus ] && break; sleep 0.05; done',
    `${node} ${CLI} mount-agent --config /run/gi/etc/xdp-vm/guest.json > /run/mount-agent.log 2>&1 &`,
  ].join('\n');
}

export interface PortalVmOptions extends Partial<BootGuestOptions> {
  /** The node the guest runs install-guest, the backend, the mount agent and the app with (a guest path); default the host's. */
  node?: string;
  /** Guest shell run as root before the guest side is set up (e.g. to put another node in place). */
  prepare?: string;
}

export async function bootPortalVm(world: World, name: string, options: PortalVmOptions = {}): Promise<PortalVm> {
  const { node = NODE, prepare, ...opts } = options;
  const paths = world.vmPaths(name);
  const handed = world.handVmSockets(name);
  const guest = await bootGuest({
    name,
    rootPorts: 2,
    serialPorts: [{ name: PORTAL_PORT, socketPath: paths.portal }],
    // QEMU runs as root here and the world's daemon as the test user, who must reach the sockets QEMU makes later (channels), in the daemon's own 0700 directory.
    umask: '0000',
    ...opts,
    extraQemuArgs: ['-qmp', `unix:${paths.qmp},server=on,wait=off`, ...(opts.extraQemuArgs ?? [])],
  }).finally(handed);
  const sh = async (script: string, timeoutMs = 60_000) => {
    const r = await guest.agent.run(`${GUEST_ENV}\n${script}`, { timeoutMs });
    if (r.status !== 0) throw new Error(`guest ${name}: exit ${r.status}\n${script}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
    return r.stdout;
  };
  try {
    if (prepare) await sh(prepare);
    await sh(guestSetupScript(node));
  } catch (err) {
    await guest.cleanup();
    throw err;
  }
  return {
    name,
    guest,
    sh,
    async app(args, appOpts = {}) {
      const as = world.user && world.user.uid !== 0 && !appOpts.asRoot ? `XDP_VM_APP_USER=${world.user.uid}:${world.user.gid} ` : '';
      const out = await sh(`${as}${node} ${GUEST_APP} ${args.map(quote).join(' ')}`, 90_000);
      return JSON.parse(out.trim().split('\n').at(-1)!) as AppResult;
    },
    async shutdown() {
      await guest.shutdown();
    },
  };
}
