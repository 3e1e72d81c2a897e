import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Bus, type Vardict } from '../dbus/bus.js';
import { callPortalRequest } from '../dbus/portal-request.js';
import { renderDataFile } from '../data-files.js';
import { portalsConf, vmPortalFile } from '../guest/install.js';
import { requireProgram } from '../deps.js';
import { runProgram, startService, type Service } from '../exec.js';
import { CONTROL_BUS_NAME } from '../host/control.js';
import { appIdOf } from '../host/documents.js';
import { cliEntry, NODE_FLAGS } from '../paths.js';
import { startPrivateBus, type PrivateBus } from './private-bus.js';
import { asUser, chownTree, handSocketsTo, lookupUser, sessionUser, type SessionUser } from './as-user.js';
import { processesMatching } from './processes.js';
import { gtkHostBackend, type GtkDialogSpec } from './gtk-portal.js';
import { SCRIPTED_PORTAL_FILE, ScriptedDialog } from './scripted-dialog.js';

/**
 * A whole deployment on one machine: a host session (private bus, stock
 * xdg-desktop-portal, document store, permission store, the scripted user)
 * and one guest session per VM (private bus, stock xdg-desktop-portal, our
 * guest backend by D-Bus activation), with our host daemon between them over
 * hybrid vsock. In this tier a VM's "mount" is its document view on the host.
 */
export interface WorldVmSpec {
  name: string;
  label?: string;
  color?: string;
  tags?: string[];
  /** A real QEMU guest: virtio-serial transport, QMP control socket, the share mounted in the guest. */
  qemu?: boolean;
  /** Its config's `usb` (a provider VM, as Qubes' sys-usb). */
  usb?: { provider: boolean };
}

export interface Guest {
  name: string;
  bus: PrivateBus;
  /** Where the guest sees its share: here, the VM's view of the document store. */
  mount: string;
  /** The hybrid-vsock socket path the host listens on for this VM (`<socket>_<port>`). */
  endpoint: string;
}

export type DialogMethod = 'OpenFile' | 'SaveFile' | 'SaveFiles';

/** A FileChooser call as an app makes it, on a bus connection the caller keeps. */
export function fileDialogOn(bus: Bus, method: DialogMethod, title: string, options: Vardict = {}, signal?: AbortSignal): Promise<DialogReply> {
  return callPortalRequest(bus, { interface: 'org.freedesktop.portal.FileChooser', member: method, signature: 'ssa{sv}', args: ['', title], options, signal });
}

export interface DialogReply {
  response: number;
  results: Vardict;
}

const PORT = 5000;
/** Where a real guest mounts its share. */
export const QEMU_GUEST_MOUNT = '/run/xdp-vm/doc';

function sessionEnv(dir: string): Record<string, string> {
  const env: Record<string, string> = {
    HOME: path.join(dir, 'home'),
    XDG_RUNTIME_DIR: path.join(dir, 'run'),
    XDG_DATA_HOME: path.join(dir, 'data'),
    XDG_CONFIG_HOME: path.join(dir, 'config'),
    XDG_STATE_HOME: path.join(dir, 'state'),
    XDG_CACHE_HOME: path.join(dir, 'cache'),
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    GIO_USE_VFS: 'local',
    GSETTINGS_BACKEND: 'memory',
    XDP_VM_LOG_LEVEL: process.env.XDP_VM_LOG_LEVEL ?? 'info',
  };
  for (const d of ['HOME', 'XDG_DATA_HOME', 'XDG_CONFIG_HOME', 'XDG_STATE_HOME', 'XDG_CACHE_HOME']) mkdirSync(env[d]!, { recursive: true });
  mkdirSync(env.XDG_RUNTIME_DIR!, { recursive: true, mode: 0o700 });
  return env;
}

export class World {
  readonly guests = new Map<string, Guest>();
  dialog!: ScriptedDialog;
  hostBus!: PrivateBus;
  daemon: Service | undefined;
  daemonLog: string[] = [];
  readonly configPath: string;
  readonly hostEnv: Record<string, string>;

  private constructor(
    readonly root: string,
    readonly vms: WorldVmSpec[],
  ) {
    this.hostEnv = sessionEnv(path.join(root, 'host'));
    this.configPath = path.join(root, 'host', 'config', 'xdp-vm', 'config.json');
  }

  /**
   * `guests: false` starts only the host side; links can then be made by hand (RawLink).
   * `userSession: true` runs the daemon on the caller's own session bus, with the
   * user's real portals and dialog (the demo on a desktop); no scripted user then.
   * `gtkDialog`: the host's FileChooser backend is the real xdg-desktop-portal-gtk
   * on that display instead of the scripted user (`dialog` is then unset).
   * `daemonEnv`: extra environment for the host daemon only.
   * `asUser`: who the whole host session (bus, portals, document store, the
   * daemon and its virtiofsds) runs as. By default the user running the tests,
   * or, when that is root, the test user (as-user.ts sessionUser): the host
   * daemon never runs as root here, as on a desktop. A root test process
   * keeps its root (QEMU's machinery needs it) and the world's files are
   * given to the user (`own`, `hostFile`).
   */
  static async start(
    vms: WorldVmSpec[],
    opts: { shares?: boolean; guests?: boolean; config?: Record<string, unknown>; userSession?: boolean; gtkDialog?: GtkDialogSpec; daemonEnv?: Record<string, string>; asUser?: string } = {},
  ): Promise<World> {
    const world = new World(mkdtempSync(path.join(tmpdir(), 'xdp-vm-world-')), vms);
    world.extraConfig = opts.config ?? {};
    world.daemonEnv = opts.daemonEnv ?? {};
    try {
      if (!opts.userSession) world.user = opts.asUser ? lookupUser(opts.asUser) : sessionUser();
      world.own(world.root);
      if (opts.userSession) world.useUserSession();
      else await world.startHost(opts.gtkDialog);
      world.writeConfig();
      world.own(world.root);
      await world.startDaemon(opts);
      if (opts.guests !== false) for (const vm of vms.filter((v) => !v.qemu)) await world.startGuest(vm);
    } catch (err) {
      await world.stop();
      throw err;
    }
    return world;
  }

  /** Top-level config keys besides `vms` (e.g. `flood`), from World.start's `config`. */
  private extraConfig: Record<string, unknown> = {};
  /** The ordinary user the host session runs as (World.start's `asUser`); unset only for `userSession`. */
  user: SessionUser | undefined;

  /** Whether the host session runs as another user than this process. */
  private get otherUser(): SessionUser | undefined {
    return this.user && this.user.uid !== process.getuid?.() ? this.user : undefined;
  }

  /** Give `p` (and what is under it) to the session's user, as if the user had made it. */
  own(p: string): string {
    if (this.otherUser) chownTree(p, this.otherUser);
    return p;
  }

  /** A folder of the user's at `p`. */
  hostDir(p: string): string {
    mkdirSync(p, { recursive: true });
    return this.own(p);
  }

  /** A file of the user's at `p`, as the user would have written it. */
  hostFile(p: string, content: string | Uint8Array): string {
    writeFileSync(p, content);
    return this.own(p);
  }
  private daemonEnv: Record<string, string> = {};

  /** Where the daemon (not under systemd here) appends its audit lines. */
  get auditFile(): string {
    return path.join(this.hostEnv.XDG_STATE_HOME!, 'xdp-vm', 'audit.jsonl');
  }

  get docMount(): string {
    return path.join(this.hostEnv.XDG_RUNTIME_DIR!, 'doc');
  }

  viewOf(vm: string): string {
    return path.join(this.docMount, 'by-app', appIdOf(vm));
  }

  private userSession = false;

  private useUserSession(): void {
    const address = process.env.DBUS_SESSION_BUS_ADDRESS;
    if (!address) throw new Error('no session bus (DBUS_SESSION_BUS_ADDRESS is unset)');
    const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined));
    this.userSession = true;
    this.hostBus = { address, env, log: [], pid: undefined, dir: this.root, stop: async () => undefined };
  }

  private async startHost(gtk?: GtkDialogSpec): Promise<void> {
    const portals = path.join(this.root, 'host', 'portals');
    mkdirSync(portals, { recursive: true });
    const backend = gtk ? gtkHostBackend(gtk, { portals, configHome: this.hostEnv.XDG_CONFIG_HOME! }) : undefined;
    if (!backend) writeFileSync(path.join(portals, 'scripted.portal'), SCRIPTED_PORTAL_FILE);
    this.hostBus = await startPrivateBus({
      dir: path.join(this.root, 'host'),
      env: { ...this.hostEnv, XDG_DESKTOP_PORTAL_DIR: portals, XDG_CURRENT_DESKTOP: 'scripted', ...backend?.env },
      services: [
        { name: 'org.freedesktop.portal.Desktop', exec: requireProgram('xdg-desktop-portal') },
        { name: 'org.freedesktop.portal.Documents', exec: requireProgram('xdg-document-portal') },
        { name: 'org.freedesktop.impl.portal.PermissionStore', exec: requireProgram('xdg-permission-store') },
        ...(backend ? [backend.service] : []),
      ],
      ...(this.otherUser ? { asUser: this.otherUser } : {}),
    });
    if (!backend) this.dialog = await ScriptedDialog.start(this.hostBus.address);
  }

  private writeConfig(): void {
    const vms: Record<string, unknown> = {};
    for (const vm of this.vms) {
      const p = this.vmPaths(vm.name);
      vms[vm.name] = {
        label: vm.label ?? vm.name,
        color: vm.color ?? '#3465a4',
        ...(vm.tags ? { tags: vm.tags } : {}),
        ...(vm.usb ? { usb: vm.usb } : {}),
        ...(vm.qemu
          ? {
              transport: { type: 'virtio-serial', socket: p.portal },
              vmm: { type: 'qmp', socket: p.qmp },
              share: { guestMount: QEMU_GUEST_MOUNT, socket: p.share },
            }
          : {
              transport: { type: 'hybrid-vsock', socket: path.join(this.root, 'vms', `${vm.name}.vsock`), port: PORT },
              share: { guestMount: this.viewOf(vm.name), socket: p.share },
            }),
      };
    }
    mkdirSync(path.join(this.root, 'vms'), { recursive: true });
    mkdirSync(path.dirname(this.configPath), { recursive: true });
    writeFileSync(this.configPath, JSON.stringify({ vms, ...this.extraConfig }, null, 2));
  }

  async startDaemon(opts: { shares?: boolean } = {}): Promise<void> {
    const args = [cliEntry(), 'host', '--config', this.configPath, ...(opts.shares === false ? ['--no-shares'] : [])];
    // Started as its #! line would start it.
    this.daemon = startService('xdp-vm host', ...asUser(this.user, process.execPath, [...NODE_FLAGS, ...args]), {
      env: { ...this.hostBus.env, ...this.daemonEnv },
      onStderrLine: (l) => this.daemonLog.push(l),
    });
    const bus = await Bus.connect(this.hostBus.address);
    try {
      const deadline = Date.now() + 20_000;
      while (!(await bus.nameOwner(CONTROL_BUS_NAME))) {
        if (!this.daemon.running) throw new Error(`host daemon exited at start:\n${this.daemonLog.join('\n')}`);
        if (Date.now() > deadline) throw new Error(`host daemon not ready after 20 s:\n${this.daemonLog.join('\n')}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    } finally {
      bus.close();
    }
    // The daemon runs as the user, as on a desktop: a test bed that ran it as root would test what no user runs.
    const uid = readFileSync(`/proc/${this.daemon.pid}/status`, 'utf8').match(/^Uid:\t(\d+)/m)?.[1];
    if (uid === '0' && !this.userSession) {
      await this.stopDaemon();
      throw new Error('the host daemon would run as root: run the tests as an ordinary user, or as root with the test user scripts/setup.sh creates');
    }
  }

  async stopDaemon(): Promise<void> {
    await this.daemon?.stop();
    this.daemon = undefined;
  }

  private async startGuest(vm: WorldVmSpec): Promise<void> {
    const dir = path.join(this.root, 'guest', vm.name);
    const env = sessionEnv(dir);
    const portals = path.join(dir, 'portals');
    mkdirSync(portals, { recursive: true });
    writeFileSync(path.join(portals, 'vm.portal'), vmPortalFile());
    writeFileSync(path.join(portals, 'portals.conf'), portalsConf());
    const endpoint = this.endpointOf(vm.name);
    const service = renderDataFile('org.freedesktop.impl.portal.desktop.vm.service.in', { XDP_VM: `${process.execPath} ${cliEntry()}` });
    const exec = /^Exec=(.*)$/m.exec(service)![1]!;
    const bus = await startPrivateBus({
      dir,
      env: { ...env, XDG_DESKTOP_PORTAL_DIR: portals, XDG_CURRENT_DESKTOP: 'guest', XDP_VM_TRANSPORT: `unix:${endpoint}` },
      services: [
        { name: 'org.freedesktop.portal.Desktop', exec: requireProgram('xdg-desktop-portal') },
        { name: 'org.freedesktop.impl.portal.desktop.vm', exec },
      ],
    });
    this.guests.set(vm.name, { name: vm.name, bus, mount: this.viewOf(vm.name), endpoint });
  }

  /** Where a VM's sockets live: QEMU's portal chardev and the daemon's QMP monitor (for `qemu` VMs), virtiofsd's. */
  vmPaths(vm: string): { portal: string; qmp: string; share: string } {
    const dir = path.join(this.root, 'vms');
    return { portal: path.join(dir, `${vm}-portal.sock`), qmp: path.join(dir, `${vm}-qmp.sock`), share: path.join(dir, `${vm}-doc.sock`) };
  }

  /**
   * Hand the sockets a root-run VMM makes for `vm` (its portal chardev, its
   * QMP monitor) to the session's user as they appear, so the daemon reaches
   * them as it would a VM the user started. Returns the stop.
   */
  handVmSockets(vm: string): () => void {
    const p = this.vmPaths(vm);
    return this.user ? handSocketsTo(this.user, [p.portal, p.qmp]) : () => undefined;
  }

  /** The hybrid-vsock endpoint of a VM, where its guest connects. */
  endpointOf(vm: string): string {
    return `${path.join(this.root, 'vms', `${vm}.vsock`)}_${PORT}`;
  }

  guest(name: string): Guest {
    const g = this.guests.get(name);
    if (!g) throw new Error(`no guest ${name}`);
    return g;
  }

  /** What an app in the guest does: call org.freedesktop.portal.FileChooser and wait for Response. */
  async fileDialog(vm: string, method: DialogMethod, title: string, options: Vardict = {}, signal?: AbortSignal): Promise<DialogReply> {
    const bus = await Bus.connect(this.guest(vm).bus.address);
    try {
      return await fileDialogOn(bus, method, title, options, signal);
    } finally {
      bus.close();
    }
  }

  /**
   * The interfaces the guest backend of `vm` exports now (its Introspect
   * XML). The host tells the guest which portals it serves; after a policy
   * change that shuts or opens one, a test waits here until the guest follows.
   */
  async guestExports(vm: string): Promise<string> {
    const bus = await Bus.connect(this.guest(vm).bus.address);
    try {
      const [xml] = await bus.call({ destination: 'org.freedesktop.impl.portal.desktop.vm', path: '/org/freedesktop/portal/desktop', interface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect', timeoutMs: 20_000 });
      return xml as string;
    } finally {
      bus.close();
    }
  }

  /** Run `xdp-vm` against this world's host session. */
  cli(args: string[]) {
    return runProgram(...asUser(this.user, process.execPath, [cliEntry(), ...args]), {
      env: { ...this.hostBus.env, XDP_VM_CONFIG: this.configPath },
      timeoutMs: 20_000,
    });
  }

  async stop(): Promise<void> {
    // Each step bounded: a test that broke the session on purpose (killed its bus, froze a process) still gets a clean stop.
    const bounded = (p: Promise<unknown>) => Promise.race([p.catch(() => undefined), new Promise((r) => setTimeout(r, 15_000).unref())]);
    for (const g of this.guests.values()) await bounded(g.bus.stop());
    await bounded(this.stopDaemon());
    this.dialog?.stop();
    await bounded(this.hostBus?.stop() ?? Promise.resolve());
    // virtiofsd outlives the daemon on purpose (a guest may have its share mounted).
    for (const p of processesMatching(this.root)) {
      try {
        process.kill(p.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
    // Not existsSync: a user's FUSE mount refuses a root test process even a stat.
    if (!this.userSession && readFileSync('/proc/self/mounts', 'utf8').includes(` ${this.docMount} `)) {
      await runProgram(requireProgram('fusermount3'), ['-u', '-z', this.docMount]).catch(() => undefined);
    }
    rmSync(this.root, { recursive: true, force: true });
  }
}
