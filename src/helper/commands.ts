/**
 * The helper's closed command set and the checks on every argument. A name
 * reaches `ip` as an argv element, never a shell word, and is still held to
 * the narrowest form the kernel accepts: an argument that starts with "-"
 * or holds a "/" never gets that far.
 */

/** Where the helper answers on the system bus (dbus-interfaces/io.github.xdp_vm.Helper1.xml). */
export const HELPER_BUS_NAME = 'io.github.xdp_vm.Helper1';
export const HELPER_PATH = '/io/github/xdp_vm/Helper1';
export const HELPER_INTERFACE = 'io.github.xdp_vm.Helper1';

export function systemBusAddress(env: NodeJS.ProcessEnv = process.env): string {
  return env.DBUS_SYSTEM_BUS_ADDRESS ?? 'unix:path=/run/dbus/system_bus_socket';
}

export const COMMANDS = {
  'tap-create': { method: 'TapCreate', arg: 'BRIDGE' },
  'tap-delete': { method: 'TapDelete', arg: 'TAP' },
  'tap-open': { method: 'TapOpen', arg: 'TAP' },
  'vm-only-up': { method: 'VmOnlyUp', arg: 'BRIDGE' },
  'usb-bind': { method: 'UsbBind', arg: 'BUSID' },
  'usb-unbind': { method: 'UsbUnbind', arg: 'BUSID' },
  'usb-open': { method: 'UsbOpen', arg: 'BUSID' },
  'usb-export': { method: 'UsbExport', arg: 'BUSID' },
} as const;
export type CommandName = keyof typeof COMMANDS;

export interface Command {
  name: CommandName;
  arg: string;
}

/** Every tap the helper makes is named TAP_PREFIX + a number; it deletes no other. */
export const TAP_PREFIX = 'xdpvm';
export const MAX_TAP_NUMBER = 9999;

/** IFNAMSIZ is 16 with the NUL: 15 characters. */
const IFNAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
const TAP_NAME = new RegExp(`^${TAP_PREFIX}(0|[1-9][0-9]{0,3})$`);
/** A USB device's bus id: bus-port(.port)*, at most 7 tiers deep; root hubs (usbN) are not devices to hand out. */
const BUS_ID = /^[1-9][0-9]{0,2}-[1-9][0-9]{0,2}(\.[1-9][0-9]{0,2}){0,5}$/;

/** Whether `name` is a network interface name the kernel takes and no tool reads as an option. */
export function isInterfaceName(name: string): boolean {
  return IFNAME.test(name);
}

export function bridgeNameProblem(name: string): string | undefined {
  if (isInterfaceName(name)) return undefined;
  return 'a bridge name is 1-15 letters, digits, "_", "." and "-", not starting with "." or "-"';
}

export function tapNameProblem(name: string): string | undefined {
  if (TAP_NAME.test(name)) return undefined;
  return `the helper's taps are named ${TAP_PREFIX}0 to ${TAP_PREFIX}${MAX_TAP_NUMBER}`;
}

export function busIdProblem(busid: string): string | undefined {
  if (BUS_ID.test(busid)) return undefined;
  return 'a USB bus id is BUS-PORT[.PORT]..., e.g. 1-2 or 3-1.4';
}

export class HelperError extends Error {
  constructor(
    /** invalid: a bad request; refused: the allow list or ownership says no; not-found; failed: the operation itself. */
    readonly kind: 'invalid' | 'refused' | 'not-found' | 'failed',
    message: string,
  ) {
    super(message);
    this.name = 'HelperError';
  }
}

/** `tap-create br0` and the like, from the CLI's words or a D-Bus method's. */
export function parseCommand(words: readonly string[]): Command {
  const [name, ...args] = words;
  const known = Object.entries(COMMANDS).map(([n, c]) => `${n} ${c.arg}`).join(', ');
  if (name === undefined || !Object.hasOwn(COMMANDS, name)) {
    throw new HelperError('invalid', `${name === undefined ? 'no command' : `unknown command "${printable(name)}"`}: the helper's commands are ${known}`);
  }
  const cmd = name as CommandName;
  const spec = COMMANDS[cmd];
  if (args.length !== 1) throw new HelperError('invalid', `${cmd} takes exactly one argument, ${spec.arg}; got ${args.length}`);
  const arg = args[0]!;
  const problem = spec.arg === 'BRIDGE' ? bridgeNameProblem(arg) : spec.arg === 'TAP' ? tapNameProblem(arg) : busIdProblem(arg);
  if (problem) throw new HelperError('invalid', `${cmd}: "${printable(arg)}" is not a valid ${spec.arg}: ${problem}`);
  return { name: cmd, arg };
}

/** Caller text quoted back in a message or log line: printable ASCII, capped. */
export function printable(s: string, max = 40): string {
  const clean = s.replace(/[^\x20-\x7e]/g, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}
