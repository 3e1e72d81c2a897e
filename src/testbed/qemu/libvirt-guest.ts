import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { requireProgram } from '../../deps.js';
import { runProgram, startService, type Service } from '../../exec.js';
import { xmlAttr, xmlElement } from '../../vmm/libvirt-xml.js';
import { GuestAgent } from './agent.js';
import { defaultCacheDir, prepareGuestImage } from './guest-image.js';
import { removeOnExit } from './reaper.js';
import { processesMatching } from '../processes.js';
import type { SessionUser } from '../as-user.js';
import { startRootShare, waitForSocket } from './virtiofsd.js';
import { checkoutPath, KERNEL_CMDLINE } from './vm.js';
import type { SerialPortSpec } from './vm.js';

/**
 * libvirt for the e2e tier: a private, privileged libvirtd of our own and
 * transient domains booted the way the QEMU harness boots its guests (PVH
 * vmlinux, busybox initramfs, the host's `/` read-only over virtiofs, the
 * command agent on a virtio-serial port), but defined in domain XML.
 *
 * The daemon runs in a mount namespace of its own in which /etc/libvirt,
 * /run/libvirt, /var/lib/libvirt and /var/log/libvirt are bind mounts of a
 * temporary directory: our qemu.conf (QEMU as root, no security driver, no
 * cgroups, no virtlogd), no system networks or domains, and nothing left on the
 * host. Clients reach it with `qemu:///system?socket=<dir>/run/libvirt-sock`.
 */

const DAEMON_DIR_PREFIX = 'xdpvm-libvirtd-';
const GUEST_DIR_PREFIX = 'xdpvm-lvguest-';

/**
 * Directories of test processes that died: by then the trap below has destroyed
 * their domains and the parent-death signal has ended the rest, so a dir no live
 * process names (and older than a boot) holds only sockets and logs.
 */
function sweepStaleDirs(): void {
  for (const name of readdirSync(tmpdir())) {
    if (!name.startsWith(DAEMON_DIR_PREFIX) && !name.startsWith(GUEST_DIR_PREFIX)) continue;
    const dir = path.join(tmpdir(), name);
    try {
      if (Date.now() - statSync(dir).mtimeMs < 60_000 || processesMatching(dir).length > 0) continue;
    } catch {
      continue;
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface PrivateLibvirtd {
  uri: string;
  dir: string;
  service: Service;
  virsh(args: readonly string[], opts?: { input?: string; timeoutMs?: number }): Promise<string>;
  /** Destroys every domain it runs, then stops the daemon; safe to call twice. */
  stop(): Promise<void>;
}

/** Only root, or root and `client`'s group: a test's host daemon runs as an ordinary user and drives libvirt as one. */
function libvirtdConf(client?: SessionUser): string {
  const group = client ? groupName(client.gid) : 'root';
  return [`unix_sock_group = "${group}"`, `unix_sock_rw_perms = "${client ? '0770' : '0700'}"`, 'auth_unix_rw = "none"', 'auth_unix_ro = "none"', 'log_outputs = "3:stderr"', ''].join('\n');
}

function groupName(gid: number): string {
  const line = readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.split(':')[2] === String(gid));
  if (!line) throw new Error(`no group with gid ${gid} in /etc/group`);
  return line.split(':')[0]!;
}
const QEMU_CONF = [
  'user = "root"', 'group = "root"', 'dynamic_ownership = 0', 'remember_owner = 0', 'security_driver = "none"',
  'stdio_handler = "file"', 'cgroup_controllers = [ ]', 'namespaces = [ ]', '',
].join('\n');

// Values arrive as positional parameters, never spliced into the script. The
// trap runs on SIGTERM from stop() and from the kernel when the test process
// dies (parent-death signal): libvirt's QEMUs are daemonized and would outlive
// libvirtd, so they are destroyed through it first.
const LIBVIRTD_SCRIPT = `
set -e
dir=$1 libvirtd=$2 virsh=$3 cache=$4
for d in /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do mkdir -p "$d"; done
mount --bind "$dir/etc" /etc/libvirt
mount --bind "$dir/run" /run/libvirt
mount --bind "$dir/lib" /var/lib/libvirt
mount --bind "$dir/log" /var/log/libvirt
mount --bind "$cache" /var/cache/libvirt
set +e
# Into a file, not our pipes: those break when the test process dies, and a
# write to them would then kill the very cleanup below.
exec >>"$dir/libvirtd.log" 2>&1
"$libvirtd" & daemon=$!
stop() {
  trap '' TERM INT HUP
  echo "xdpvm: stopping: destroying domains"
  "$virsh" -c qemu:///system list --name | while read -r dom; do
    [ -n "$dom" ] && "$virsh" -c qemu:///system destroy "$dom"
  done
  kill "$daemon"; wait "$daemon"; exit 0
}
trap stop TERM INT HUP
wait "$daemon"
`;

/** `client`: an ordinary user who may connect too (its group gets the socket; the daemon's dir lets it through). */
export async function startPrivateLibvirtd(opts: { client?: SessionUser } = {}): Promise<PrivateLibvirtd> {
  const libvirtd = requireProgram('libvirtd');
  const virsh = requireProgram('virsh');
  sweepStaleDirs();
  const dir = mkdtempSync(path.join(tmpdir(), DAEMON_DIR_PREFIX));
  const forgetDir = removeOnExit(dir);
  for (const d of ['etc/qemu', 'run', 'lib', 'log']) mkdirSync(path.join(dir, d), { recursive: true });
  writeFileSync(path.join(dir, 'etc', 'libvirtd.conf'), libvirtdConf(opts.client));
  if (opts.client && opts.client.uid !== process.getuid?.()) for (const d of [dir, path.join(dir, 'run')]) chmodSync(d, 0o711);
  writeFileSync(path.join(dir, 'etc', 'qemu.conf'), QEMU_CONF);
  // Kept between runs: libvirt probes QEMU's capabilities once (~7 s) and revalidates the cache itself.
  const cache = path.resolve(defaultCacheDir(), '..', 'libvirt-cache');
  mkdirSync(cache, { recursive: true });
  const args = ['--pdeathsig', 'TERM', '--', '/usr/bin/unshare', '--mount', '--propagation', 'private', '--', '/bin/sh', '-c', LIBVIRTD_SCRIPT, 'xdpvm-libvirtd', dir, libvirtd, virsh, cache];
  const service = startService('libvirtd', '/usr/bin/setpriv', args);
  // Not the reaper's SIGKILL: the trap must get to destroy the domains.
  const onExit = () => service.kill('SIGTERM');
  process.once('exit', onExit);
  const uri = `qemu:///system?socket=${path.join(dir, 'run', 'libvirt-sock')}`;
  const run = async (a: readonly string[], opts: { input?: string; timeoutMs?: number } = {}) =>
    (await runProgram(virsh, ['-c', uri, ...a], { env: { LC_ALL: 'C' }, timeoutMs: opts.timeoutMs ?? 60_000, ...(opts.input !== undefined ? { input: opts.input } : {}) })).stdout;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    process.removeListener('exit', onExit);
    await service.stop(20_000);
    rmSync(dir, { recursive: true, force: true });
    forgetDir();
  };
  try {
    await waitForSocket(path.join(dir, 'run', 'libvirt-sock'), service, 20_000);
    await run(['version']);
  } catch (err) {
    const log = `${service.stderr}${readLog(dir)}`.trim().slice(-2000);
    await stop();
    throw new Error(`libvirtd did not come up: ${(err as Error).message}\n--- libvirtd log ---\n${log}`, { cause: err });
  }
  return { uri, dir, service, virsh: run, stop };
}

function readLog(dir: string): string {
  try {
    return readFileSync(path.join(dir, 'libvirtd.log'), 'utf8');
  } catch {
    return '';
  }
}

export interface LibvirtGuestOptions {
  name: string;
  /** The libvirt domain name; default `xdpvm-<name>-<random>`. */
  domain?: string;
  /** Extra virtio-serial ports (QEMU listens on each socket). */
  channels?: readonly SerialPortSpec[];
  /** Spare pcie-root-ports for hot-plug; default 2. */
  rootPorts?: number;
  memMiB?: number;
  /** From `virsh create` to the agent's READY; default 90 s. */
  timeoutMs?: number;
}

export interface LibvirtGuest {
  name: string;
  domain: string;
  workDir: string;
  agent: GuestAgent;
  /** `virsh create` to agent ready, in ms. */
  bootMs: number;
  consoleTail(lines?: number): string;
  /** poweroff in the guest, wait until libvirt has forgotten the domain, destroy it if it does not go. */
  shutdown(timeoutMs?: number): Promise<{ ms: number; graceful: boolean }>;
  cleanup(): Promise<void>;
}

const LIBVIRT_CMDLINE = [...KERNEL_CMDLINE, 'xdpvm.modules=core', 'xdpvm.root=hostroot'];
const AGENT_PORT = 'org.xdpvm.agent';

const text = (name: string, value: string | number) => `<${name}>${xmlAttr(String(value))}</${name}>`;

/** The domain XML: a TCG q35 machine with shared memory, like the harness's QEMU command line. */
export function guestDomainXml(g: { domain: string; vmlinux: string; initramfs: string; workDir: string; memMiB: number; rootPorts: number; channels: readonly SerialPortSpec[] }): string {
  const ports = Array.from({ length: g.rootPorts + 2 }, (_, i) => xmlElement('controller', { type: 'pci', index: i + 1, model: 'pcie-root-port' }));
  const channels = [{ name: AGENT_PORT, socketPath: path.join(g.workDir, 'agent.sock') }, ...g.channels].map((c) =>
    xmlElement('channel', { type: 'unix' }, [xmlElement('source', { mode: 'bind', path: c.socketPath }), xmlElement('target', { type: 'virtio', name: c.name })]),
  );
  return xmlElement('domain', { type: 'qemu' }, [
    text('name', g.domain),
    `<memory unit="MiB">${g.memMiB}</memory>`,
    text('vcpu', 1),
    xmlElement('memoryBacking', {}, [xmlElement('source', { type: 'memfd' }), xmlElement('access', { mode: 'shared' })]),
    xmlElement('os', {}, [
      `<type arch="x86_64" machine="q35">hvm</type>`,
      text('kernel', g.vmlinux),
      text('initrd', g.initramfs),
      text('cmdline', [...LIBVIRT_CMDLINE, `xdpvm.checkout=${checkoutPath()}`].join(' ')),
    ]),
    // ACPI: the hot-plug path the QEMU tests measured; libvirt passes -no-acpi without it.
    '<features><acpi/><apic/></features>',
    xmlElement('cpu', { mode: 'maximum' }),
    '<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>',
    xmlElement('devices', {}, [
      text('emulator', requireProgram('qemu-system-x86_64')),
      xmlElement('controller', { type: 'usb', model: 'none' }),
      xmlElement('controller', { type: 'pci', index: 0, model: 'pcie-root' }),
      ...ports,
      xmlElement('serial', { type: 'file' }, [xmlElement('source', { path: path.join(g.workDir, 'console.log') }), xmlElement('target', { port: 0 })]),
      ...channels,
      xmlElement('filesystem', { type: 'mount', accessmode: 'passthrough' }, [
        xmlElement('driver', { type: 'virtiofs', queue: 1024 }),
        xmlElement('source', { socket: path.join(g.workDir, 'root.sock') }),
        xmlElement('target', { dir: 'hostroot' }),
      ]),
      xmlElement('memballoon', { model: 'none' }),
    ]),
  ]);
}

export async function bootLibvirtGuest(lv: PrivateLibvirtd, opts: LibvirtGuestOptions): Promise<LibvirtGuest> {
  const image = await prepareGuestImage();
  const domain = opts.domain ?? `xdpvm-${opts.name}-${randomBytes(3).toString('hex')}`;
  sweepStaleDirs();
  const workDir = mkdtempSync(path.join(tmpdir(), `${GUEST_DIR_PREFIX}${opts.name}-`));
  const forgetDir = removeOnExit(workDir);
  mkdirSync(path.join(workDir, 'hostroot'));
  const consoleTail = (n = 30) => {
    try {
      return readFileSync(path.join(workDir, 'console.log'), 'utf8').split('\n').slice(-n).join('\n');
    } catch {
      return '(no console output)';
    }
  };
  let agent: GuestAgent | undefined;
  let rootShare: Service | undefined;
  let released = false;
  const destroy = () => lv.virsh(['destroy', '--domain', domain]).catch(() => undefined);
  const release = async () => {
    if (released) return;
    released = true;
    agent?.close();
    await rootShare?.stop(1000);
    rmSync(workDir, { recursive: true, force: true });
    forgetDir();
  };
  try {
    rootShare = await startRootShare({ socketPath: path.join(workDir, 'root.sock'), mountPoint: path.join(workDir, 'hostroot'), alsoShow: checkoutPath() });
    const xml = guestDomainXml({ domain, vmlinux: image.vmlinux, initramfs: image.initramfs, workDir, memMiB: opts.memMiB ?? 512, rootPorts: opts.rootPorts ?? 2, channels: opts.channels ?? [] });
    writeFileSync(path.join(workDir, 'domain.xml'), xml);
    const started = Date.now();
    await lv.virsh(['create', '--file', path.join(workDir, 'domain.xml')]);
    agent = await GuestAgent.connect(path.join(workDir, 'agent.sock'), { timeoutMs: opts.timeoutMs ?? 90_000, name: opts.name });
    const bootMs = Date.now() - started;
    const ready = agent;
    return {
      name: opts.name,
      domain,
      workDir,
      agent: ready,
      bootMs,
      consoleTail,
      async shutdown(timeoutMs = 15_000) {
        const t0 = Date.now();
        ready.send('busybox poweroff -f || echo o > /proc/sysrq-trigger');
        let graceful = false;
        while (Date.now() - t0 < timeoutMs) {
          // A transient domain is forgotten as soon as it stops.
          if (!(await lv.virsh(['list', '--name']).catch(() => '')).split('\n').includes(domain)) {
            graceful = true;
            break;
          }
          await sleep(100);
        }
        if (!graceful) await destroy();
        await release();
        return { ms: Date.now() - t0, graceful };
      },
      async cleanup() {
        await destroy();
        await release();
      },
    };
  } catch (err) {
    const tail = consoleTail();
    await destroy();
    await release();
    throw new Error(`booting libvirt guest ${opts.name} failed: ${(err as Error).message}\n--- console tail ---\n${tail}`, { cause: err });
  }
}
