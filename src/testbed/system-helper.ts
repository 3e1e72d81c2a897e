import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Bus } from '../dbus/bus.js';
import { requireProgram } from '../deps.js';
import { runProgram, startService, type Service } from '../exec.js';
import { HELPER_BUS_NAME } from '../helper/commands.js';
import { cliEntry, packageRoot } from '../paths.js';

/**
 * The privileged helper as a host runs it, for tests run as root: a
 * dbus-daemon configured like the system bus (deny by default, our policy
 * file from data/ punching its hole), and `xdp-vm helper serve` on it as
 * root, in a network namespace of its own whose /sys (a mount namespace of
 * its own) is that namespace's. Bridges, taps and any DHCP server live only
 * there; a tap's descriptor still works in a VMM outside it. Callers are
 * other uids, whose uid the bus reads from their socket.
 */
export interface SystemHelper {
  /** The system-like bus: DBUS_SYSTEM_BUS_ADDRESS for the callers. */
  address: string;
  /** The helper's pid: its namespaces are the ones `inNs` enters. */
  pid: number;
  allowList: string;
  stateDir: string;
  /** The helper's stderr lines (its JSON log). */
  log: string[];
  /** Run `file args` in the helper's network namespace; `mount` also enters its mount namespace (its /sys). */
  inNs(file: string, args: readonly string[], opts?: { mount?: boolean; timeoutMs?: number }): Promise<string>;
  writeAllowList(text: string): void;
  stop(): Promise<void>;
}

export interface SystemHelperOptions {
  /** The helper's allow list, as /etc/xdp-vm/helper.conf would hold it. */
  allowList: string;
  /** How to start the CLI: [file, ...args] before `helper serve`; default this checkout's built CLI under this node. */
  cli?: string[];
  /** Extra `helper serve` options (--usb-sysfs, --dev-usb). */
  serveArgs?: string[];
}

/** A system.conf of our own: Debian's default policy, listening in `dir`, with data/'s policy file included. */
export function systemBusConfig(dir: string): string {
  mkdirSync(path.join(dir, 'system.d'), { recursive: true });
  copyFileSync(path.join(packageRoot(), 'data', 'io.github.xdp_vm.Helper1.conf'), path.join(dir, 'system.d', 'io.github.xdp_vm.Helper1.conf'));
  const file = path.join(dir, 'system.conf');
  writeFileSync(
    file,
    `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=${dir}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <includedir>${dir}/system.d</includedir>
</busconfig>
`,
  );
  return file;
}

export async function startSystemHelper(opts: SystemHelperOptions): Promise<SystemHelper> {
  if (process.getuid?.() !== 0) throw new Error('the system helper testbed needs root: the helper makes taps and runs in a network namespace of its own');
  const scratch = mkdtempSync(path.join(tmpdir(), 'xdp-vm-system-helper-'));
  chmodSync(scratch, 0o755);
  const busDir = path.join(scratch, 'bus');
  mkdirSync(busDir, { mode: 0o755 });
  const address = `unix:path=${busDir}/system_bus_socket`;
  const allowList = path.join(scratch, 'etc', 'helper.conf');
  mkdirSync(path.dirname(allowList), { mode: 0o755 });
  const stateDir = path.join(scratch, 'run', 'xdp-vm-helper');
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const log: string[] = [];
  const writeAllowList = (text: string) => {
    writeFileSync(allowList, `${text}\n`, { mode: 0o644 });
    chmodSync(allowList, 0o644);
    chownSync(allowList, 0, 0);
  };
  writeAllowList(opts.allowList);
  const dbus = startService('system-bus', requireProgram('dbus-daemon'), ['--config-file', systemBusConfig(busDir), '--nofork', '--nopidfile'], {});
  let root: Bus | undefined;
  let helper: Service | undefined;
  const stop = async () => {
    // dnsmasq daemonized into the helper's namespace: it would outlive it.
    for (const f of existsSync(stateDir) ? readdirSync(stateDir).filter((n) => n.endsWith('.pid')) : []) {
      try {
        process.kill(Number(readFileSync(path.join(stateDir, f), 'utf8')), 'SIGTERM');
      } catch {
        // gone already
      }
    }
    root?.close();
    await helper?.stop();
    await dbus.stop();
    rmSync(scratch, { recursive: true, force: true });
  };
  try {
    for (let i = 0; ; i++) {
      try {
        root = await Bus.connect(address);
        break;
      } catch (err) {
        if (i > 200) throw new Error(`the system-like dbus-daemon did not come up: ${(err as Error).message}\n${dbus.stderr}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    const cli = opts.cli ?? [process.execPath, cliEntry()];
    const serve = [...cli, 'helper', 'serve', '--bus', address, '--allow-list', allowList, '--state-dir', stateDir, '--idle-exit', '0', ...(opts.serveArgs ?? [])];
    helper = startService('helper', requireProgram('unshare'), ['--net', '--mount', '--', '/bin/sh', '-c', 'mount -t sysfs sysfs /sys && ip link set lo up && exec "$0" "$@"', ...serve], {
      onStderrLine: (l) => log.push(l),
    });
    for (let i = 0; !(await root.nameOwner(HELPER_BUS_NAME)); i++) {
      if (!helper.running || i > 400) throw new Error(`the helper did not come up:\n${log.join('\n')}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const pid = helper.pid!;
  const inNs: SystemHelper['inNs'] = async (file, args, o = {}) =>
    (await runProgram(requireProgram('nsenter'), [`--target=${pid}`, '--net', ...(o.mount ? ['--mount'] : []), '--', file, ...args], { timeoutMs: o.timeoutMs ?? 10_000 })).stdout;
  return { address, pid, allowList, stateDir, log, inNs, writeAllowList, stop };
}
