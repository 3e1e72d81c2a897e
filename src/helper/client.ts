import net from 'node:net';
import { Bus, BusCallError } from '../dbus/bus.js';
import { COMMANDS, HELPER_BUS_NAME, HELPER_INTERFACE, HELPER_PATH, systemBusAddress, type CommandName } from './commands.js';

/**
 * What the user's side calls: the host daemon (for a VM's tap or USB device)
 * and `xdp-vm helper COMMAND ARG`. The helper is D-Bus activated, so the
 * first call starts it. A refusal arrives as a BusCallError whose message is
 * the helper's sentence.
 */
export class HelperClient {
  private constructor(private readonly bus: Bus) {}

  static async connect(address = systemBusAddress()): Promise<HelperClient> {
    return new HelperClient(await Bus.connect(address, { unixFds: true }));
  }

  /** Run one command; `tap-create` answers the tap's name, `usb-open` a descriptor the caller must close. */
  async run(name: CommandName, arg: string): Promise<string | number | undefined> {
    const [out] = await this.bus.call({
      destination: HELPER_BUS_NAME,
      path: HELPER_PATH,
      interface: HELPER_INTERFACE,
      member: COMMANDS[name].method,
      signature: 's',
      body: [arg],
      timeoutMs: 30_000,
    });
    return out as string | number | undefined;
  }

  async tapCreate(bridge: string): Promise<string> {
    return String(await this.run('tap-create', bridge));
  }

  /** Bring a vm-only network's bridge up (made on first use, with its DHCP server); answers the host's ADDR/LEN on it. */
  async vmOnlyUp(bridge: string): Promise<string> {
    return String(await this.run('vm-only-up', bridge));
  }

  async tapDelete(tap: string): Promise<void> {
    await this.run('tap-delete', tap);
  }

  /** One queue of the caller's tap, as a descriptor the caller must close. */
  async tapOpen(tap: string): Promise<number> {
    return this.descriptor('tap-open', tap);
  }

  async usbBind(busid: string): Promise<void> {
    await this.run('usb-bind', busid);
  }

  async usbUnbind(busid: string): Promise<void> {
    await this.run('usb-unbind', busid);
  }

  async usbOpen(busid: string): Promise<number> {
    return this.descriptor('usb-open', busid);
  }

  /** A device the caller bound, exported by the host kernel: the caller's end of the Unix stream usbip-host has the other end of. */
  async usbExport(busid: string): Promise<net.Socket> {
    const fd = await this.descriptor('usb-export', busid);
    return new net.Socket({ fd, readable: true, writable: true });
  }

  private async descriptor(name: 'usb-open' | 'tap-open' | 'usb-export', arg: string): Promise<number> {
    if (!this.bus.unixFds) throw new Error('this D-Bus connection cannot receive descriptors (no unix fd passing)');
    const fd = await this.run(name, arg);
    if (typeof fd !== 'number') throw new Error('the helper sent no descriptor');
    return fd;
  }

  close(): void {
    this.bus.close();
  }
}

const NOT_INSTALLED = 'the privileged helper is not installed on this host (README: "The privileged helper")';

/** What the helper said, without the bus's framing; "not installed" in plain words. */
export function helperWords(err: unknown): string {
  if (!(err instanceof BusCallError)) return (err as Error).message;
  if (err.errorName === 'org.freedesktop.DBus.Error.ServiceUnknown') return NOT_INSTALLED;
  const said = err.message.slice(`${err.member}: ${err.errorName}: `.length);
  return `the privileged helper refused: ${said}`;
}

/**
 * helperProblem, asked at most once per `ttlMs` however many ask at once or
 * in a row: a VM asking for a bridge network in a loop cannot make the
 * daemon hammer the system bus.
 */
export function cachedHelperProblem(ttlMs = 2000, probe: () => Promise<string | undefined> = () => helperProblem()): () => Promise<string | undefined> {
  let last: { at: number; answer: Promise<string | undefined> } | undefined;
  return () => {
    const now = Date.now();
    if (!last || now - last.at >= ttlMs) last = { at: now, answer: probe() };
    return last.answer;
  };
}

/**
 * Why the helper cannot be asked from here, or undefined: the system bus
 * answers, and the helper is on it or can be started there by activation.
 * Asked before the user is, so nobody is asked about what cannot be done.
 * It starts nothing: the helper's own rules are its answer to a request.
 */
export async function helperProblem(address = systemBusAddress()): Promise<string | undefined> {
  let bus: Bus;
  try {
    bus = await Bus.connect(address);
  } catch (err) {
    return `the privileged helper cannot be reached on the system bus (${address}): ${(err as Error).message}`;
  }
  const dbus = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', timeoutMs: 5000 };
  try {
    const [owned] = await bus.call({ ...dbus, member: 'NameHasOwner', signature: 's', body: [HELPER_BUS_NAME] });
    if (owned === true) return undefined;
    const [names] = await bus.call({ ...dbus, member: 'ListActivatableNames', signature: '', body: [] });
    return Array.isArray(names) && names.includes(HELPER_BUS_NAME) ? undefined : NOT_INSTALLED;
  } catch (err) {
    return `the system bus (${address}) would not say whether the privileged helper is there: ${helperWords(err)}`;
  } finally {
    bus.close();
  }
}
