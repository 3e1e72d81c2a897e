import dbus from 'dbus-next';
import type { EventEmitter } from 'node:events';
import { closeSync } from 'node:fs';
import { childLogger } from '../log.js';
import { setCloseOnExec } from '../native/addon.js';
import { introspectionXml, type InterfaceDef } from './interfaces.js';

/**
 * The only module that imports dbus-next. It exports objects from the XML
 * interface definitions with the low-level handler (so handlers see the
 * sender), answers Introspect/Properties itself, and maps every failure to the
 * closed set of org.freedesktop.portal.Error names: dbus-next would otherwise
 * send a JavaScript stack trace to the caller.
 */
const { Message, Variant, MessageType } = dbus;
type DBusMessage = InstanceType<typeof Message>;

const log = childLogger({ module: 'dbus' });

export type PortalErrorKind = 'Failed' | 'InvalidArgument' | 'NotFound' | 'Exists' | 'NotAllowed' | 'Cancelled' | 'WindowDestroyed';

export class PortalError extends Error {
  constructor(
    readonly kind: PortalErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'PortalError';
  }

  get dbusName(): string {
    return `org.freedesktop.portal.Error.${this.kind}`;
  }
}

/** An error reply from another service. */
export class BusCallError extends Error {
  constructor(
    readonly errorName: string,
    message: string,
    readonly member: string,
  ) {
    super(`${member}: ${errorName}: ${message}`);
    this.name = 'BusCallError';
  }
}

export type { Variant } from 'dbus-next';
export interface TypedValue {
  signature: string;
  value: unknown;
}
export type Vardict = Record<string, TypedValue>;

export function variant(signature: string, value: unknown): TypedValue {
  return new Variant(signature, value) as TypedValue;
}

export function isTypedValue(v: unknown): v is TypedValue {
  return v instanceof Variant;
}

export interface MethodContext {
  sender: string;
  path: string;
  /** Run `cb` once the reply (or error) has been written, e.g. to close a descriptor the reply carries. */
  afterReply?: (cb: () => void) => void;
}
export type MethodImpl = (args: unknown[], ctx: MethodContext) => Promise<unknown[]> | unknown[];

export interface CallOptions {
  destination: string;
  path: string;
  interface: string;
  member: string;
  signature?: string;
  body?: unknown[];
  timeoutMs?: number;
}

export interface SignalMatch {
  /** A unique name (`:1.42`): signals from anyone else are dropped even if unicast to us. */
  sender: string;
  path?: string;
  interface: string;
  member: string;
}

const DISCONNECTED = 'org.freedesktop.DBus.Error.Disconnected';

/** dbus-next's connection and the socket under it (a usocket USocket, or a net.Socket). */
interface RawConnection extends EventEmitter {
  stream: EventEmitter & { fd?: number; destroy?: () => void; supportsUnixFd?: boolean; writableLength?: number; destroyed?: boolean };
}

interface Exported {
  iface: InterfaceDef;
  impl: Record<string, MethodImpl>;
  properties: Record<string, () => TypedValue>;
}

/**
 * The address as dbus-next spells a plain Node socket: for a unix path or
 * abstract name it otherwise always uses usocket, a native addon, whose
 * close path has aborted a process (libuv's uv__finish_close assertion)
 * under many short-lived connections. Only a connection that passes
 * descriptors needs usocket; every other one gets net.Socket.
 */
export function plainSocketAddress(address: string): string {
  return address
    .split(';')
    .map((a) => {
      const m = /^unix:(.*)$/.exec(a);
      if (!m) return a;
      const params = new Map(m[1]!.split(',').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] as const));
      const target = params.get('path') ?? (params.has('abstract') ? `\0${params.get('abstract')}` : undefined);
      return target === undefined || target.includes(',') || target.includes(';') ? a : `unix:socket=${target}`;
    })
    .join(';');
}

export class Bus {
  private readonly objects = new Map<string, Map<string, Exported>>();
  private closed = false;
  /** The connection ended without our asking: every call fails at once from then on. */
  private gone = false;
  private readonly onGone: (() => void)[] = [];
  /** Calls waiting for a reply, to be failed the moment the connection goes. */
  private readonly waiting = new Set<(err: Error) => void>();

  private constructor(private readonly raw: dbus.MessageBus) {
    raw.addMethodHandler((msg: DBusMessage) => this.dispatch(msg));
    // A dead bus never answers: without this, every call waits out its whole timeout.
    const stream = this.connection.stream;
    const lost = () => this.lost();
    stream.once('end', lost);
    stream.once('close', lost);
    stream.on('error', lost);
  }

  private get connection(): RawConnection {
    return (this.raw as unknown as { _connection: RawConnection })._connection;
  }

  /**
   * `dropReceivedFds`: close every descriptor that arrives. dbus-next never
   * closes the ones a message carries, so a service that takes none would
   * otherwise let any caller fill its descriptor table.
   */
  static async connect(address: string, opts: { unixFds?: boolean; dropReceivedFds?: boolean } = {}): Promise<Bus> {
    const raw = dbus.sessionBus({ busAddress: opts.unixFds ? address : plainSocketAddress(address), negotiateUnixFd: opts.unixFds ?? false } as never);
    const bus = new Bus(raw);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`cannot connect to D-Bus at ${address}: ${err.message}`));
      raw.once('error', onError);
      raw.once('connect', () => {
        raw.off('error', onError);
        // usocket makes its socket without SOCK_CLOEXEC; exec.ts also sweeps before each spawn.
        const fd = bus.connection.stream.fd;
        if (typeof fd === 'number') setCloseOnExec(fd);
        raw.on('error', (err: Error) => log.warn({ err: err.message }, 'D-Bus connection error'));
        if (opts.dropReceivedFds) bus.connection.stream.on('fds', (fds: number[]) => fds.forEach((fd) => closeQuietly(fd)));
        resolve();
      });
    });
    return bus;
  }

  /** Whether descriptors can be sent: asked for with `unixFds`, agreed by the bus, and a socket (usocket) that carries them. */
  get unixFds(): boolean {
    return this.connection.stream.supportsUnixFd === true;
  }

  get uniqueName(): string {
    return (this.raw as unknown as { name: string | null }).name ?? '';
  }

  /** `cb` runs once when the connection ends other than by close(), or at once if it has. */
  onDisconnect(cb: () => void): void {
    if (this.gone && !this.closed) queueMicrotask(cb);
    else this.onGone.push(cb);
  }

  get connected(): boolean {
    return !this.gone && !this.closed;
  }

  private lost(): void {
    if (this.gone) return;
    this.gone = true;
    for (const fail of this.waiting) fail(new Error('the D-Bus connection is gone'));
    this.waiting.clear();
    this.connection.stream.destroy?.();
    if (this.closed) return;
    for (const cb of this.onGone.splice(0)) cb();
  }

  /** Sends on a dead connection would only make dbus-next emit an error per message. */
  private send(msg: DBusMessage): void {
    if (this.connected) this.raw.send(msg);
  }

  async call(opts: CallOptions): Promise<unknown[]> {
    if (!this.connected) throw new BusCallError(DISCONNECTED, this.closed ? 'the bus connection was closed' : 'the bus connection is gone', opts.member);
    const msg = new Message({
      destination: opts.destination,
      path: opts.path,
      interface: opts.interface,
      member: opts.member,
      signature: opts.signature ?? '',
      body: opts.body ?? [],
    });
    let timer: NodeJS.Timeout | undefined;
    let abandon: ((err: Error) => void) | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new BusCallError('org.freedesktop.DBus.Error.Timeout', `no reply within ${opts.timeoutMs ?? 25_000} ms`, opts.member)), opts.timeoutMs ?? 25_000);
      abandon = (err) => reject(new BusCallError(DISCONNECTED, err.message, opts.member));
      this.waiting.add(abandon);
    });
    try {
      const reply = (await Promise.race([this.raw.call(msg), timeout])) as DBusMessage | null;
      return reply?.body ?? [];
    } catch (err) {
      const e = err as { type?: string; text?: string; message: string };
      if (err instanceof BusCallError) throw err;
      if (e.type) throw new BusCallError(e.type, e.text ?? e.message, opts.member);
      throw err;
    } finally {
      clearTimeout(timer);
      if (abandon) this.waiting.delete(abandon);
    }
  }

  async requestName(name: string): Promise<void> {
    const [result] = await this.call({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member: 'RequestName',
      signature: 'su',
      body: [name, 4 /* DO_NOT_QUEUE */],
    });
    if (result !== 1 && result !== 4) throw new Error(`the bus name ${name} is already owned by another process`);
  }

  /** Give up a well-known name requested with requestName; nothing happens if we do not own it. */
  async releaseName(name: string): Promise<void> {
    if (!this.connected) return;
    await this.call({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'ReleaseName', signature: 's', body: [name] });
  }

  async nameOwner(name: string): Promise<string | undefined> {
    try {
      const [owner] = await this.call({
        destination: 'org.freedesktop.DBus',
        path: '/org/freedesktop/DBus',
        interface: 'org.freedesktop.DBus',
        member: 'GetNameOwner',
        signature: 's',
        body: [name],
      });
      return owner as string;
    } catch (err) {
      if (err instanceof BusCallError && err.errorName === 'org.freedesktop.DBus.Error.NameHasNoOwner') return undefined;
      throw err;
    }
  }

  /** Subscribe to a signal; returns the unsubscribe function. */
  async subscribe(match: SignalMatch, cb: (body: unknown[]) => void): Promise<() => Promise<void>> {
    const rule = [
      "type='signal'",
      `sender='${match.sender}'`,
      match.path ? `path='${match.path}'` : '',
      `interface='${match.interface}'`,
      `member='${match.member}'`,
    ]
      .filter(Boolean)
      .join(',');
    const listener = (msg: DBusMessage) => {
      if (msg.type !== MessageType.SIGNAL || msg.sender !== match.sender) return;
      if (msg.interface !== match.interface || msg.member !== match.member) return;
      if (match.path && msg.path !== match.path) return;
      cb(msg.body ?? []);
    };
    this.raw.on('message', listener);
    await this.call({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'AddMatch', signature: 's', body: [rule] });
    return async () => {
      this.raw.off('message', listener);
      if (!this.connected) return;
      await this.call({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'RemoveMatch', signature: 's', body: [rule] }).catch(() => undefined);
    };
  }

  /** Export `iface` at `path`; returns the function that unexports it. */
  export(path: string, iface: InterfaceDef, impl: Record<string, MethodImpl>, properties: Record<string, () => TypedValue> = {}): () => void {
    for (const name of Object.keys(impl)) if (!iface.methods.has(name)) throw new Error(`${iface.name} has no method ${name}`);
    let at = this.objects.get(path);
    if (!at) this.objects.set(path, (at = new Map()));
    const entry: Exported = { iface, impl, properties };
    at.set(iface.name, entry);
    return () => {
      const cur = this.objects.get(path);
      if (cur?.get(iface.name) !== entry) return;
      cur.delete(iface.name);
      if (cur.size === 0) this.objects.delete(path);
    };
  }

  emitSignal(path: string, iface: InterfaceDef, member: string, body: unknown[], destination?: string): void {
    const def = iface.signals.get(member);
    if (!def) throw new Error(`${iface.name} has no signal ${member}`);
    const msg = Message.newSignal(path, iface.name, member, def.signature, body);
    if (destination) msg.destination = destination;
    this.send(msg);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.gone) this.raw.disconnect();
  }

  private dispatch(msg: DBusMessage): boolean {
    const path = msg.path ?? '';
    if (msg.interface === 'org.freedesktop.DBus.Introspectable' && msg.member === 'Introspect') {
      const ifaces = [...(this.objects.get(path)?.values() ?? [])].map((e) => e.iface);
      this.send(Message.newMethodReturn(msg, 's', [introspectionXml(ifaces, this.childrenOf(path))]));
      return true;
    }
    const at = this.objects.get(path);
    if (!at) return false;
    if (msg.interface === 'org.freedesktop.DBus.Properties') return this.properties(msg, at);
    const entry = msg.interface ? at.get(msg.interface) : [...at.values()].find((e) => e.iface.methods.has(msg.member ?? ''));
    const def = entry?.iface.methods.get(msg.member ?? '');
    const fn = def && entry?.impl[def.name];
    if (!entry || !def || !fn) return false;
    if ((msg.signature ?? '') !== def.inSignature) {
      this.replyError(msg, new PortalError('InvalidArgument', `${def.name} takes (${def.inSignature}), got (${msg.signature ?? ''})`));
      return true;
    }
    void this.invoke(msg, def.outSignature, fn, { sender: msg.sender ?? '', path });
    return true;
  }

  private async invoke(msg: DBusMessage, outSignature: string, fn: MethodImpl, ctx: MethodContext): Promise<void> {
    const after: (() => void)[] = [];
    ctx.afterReply = (cb) => after.push(cb);
    try {
      const out = await fn(msg.body ?? [], ctx);
      this.send(Message.newMethodReturn(msg, outSignature, out));
    } catch (err) {
      if (!(err instanceof PortalError)) log.error({ err, member: msg.member, path: ctx.path }, 'D-Bus method handler failed');
      this.replyError(msg, err instanceof PortalError ? err : new PortalError('Failed', `${msg.member} failed`));
    } finally {
      if (after.length) this.whenWritten(() => after.forEach((cb) => cb()));
    }
  }

  /**
   * A descriptor in a reply is sent by sendmsg when the socket takes the
   * message: at once, unless earlier messages are still queued. Closing it
   * before then would send whatever reuses its number.
   */
  private whenWritten(cb: () => void): void {
    const stream = this.connection.stream;
    if (!stream.writableLength || stream.destroyed || this.gone) cb();
    else setTimeout(() => this.whenWritten(cb), 10);
  }

  private replyError(msg: DBusMessage, err: PortalError): void {
    this.send(Message.newError(msg as never, err.dbusName, err.message));
  }

  private properties(msg: DBusMessage, at: Map<string, Exported>): boolean {
    const [ifaceName, prop] = (msg.body ?? []) as [string, string | undefined];
    const entry = at.get(ifaceName);
    if (msg.member === 'GetAll') {
      const all: Vardict = {};
      for (const [k, get] of Object.entries(entry?.properties ?? {})) all[k] = get();
      this.send(Message.newMethodReturn(msg, 'a{sv}', [all]));
      return true;
    }
    const get = prop ? entry?.properties[prop] : undefined;
    if (msg.member === 'Get' && get) {
      this.send(Message.newMethodReturn(msg, 'v', [get()]));
      return true;
    }
    this.send(Message.newError(msg as never, 'org.freedesktop.DBus.Error.UnknownProperty', `no property ${prop ?? ''} on ${ifaceName}`));
    return true;
  }

  private childrenOf(path: string): string[] {
    const prefix = path === '/' ? '/' : `${path}/`;
    const names = new Set<string>();
    for (const p of this.objects.keys()) if (p.startsWith(prefix)) names.add(p.slice(prefix.length).split('/')[0]!);
    return [...names].filter(Boolean);
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}
