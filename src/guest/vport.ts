import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VsockSocket } from '../transport/vsock-socket.js';
import { EAGAIN, formatAddress, requireBinding, VMADDR_CID_ANY, VMADDR_PORT_ANY, vsockError, type NativeHandle } from '../transport/vsock-native.js';

/**
 * The guest end of a raw byte channel the host hot-plugged as a
 * virtserialport (src/vmm/qemu-channel.ts): find its /dev/vportNpM by the
 * port's name, and open it as a Duplex. Runs in the guest's root agent, on
 * Node 18.20 as well as 20.
 *
 * Finding: guests here have no udev, so nobody makes
 * /dev/virtio-ports/<name>; the port's name is in
 * /sys/class/virtio-ports/vportNpM/name (present once the host has named the
 * port), and devtmpfs makes /dev/vportNpM. Neither sysfs nor devtmpfs
 * reports new entries through inotify, so a hot-plugged port is polled for.
 *
 * Opening: Node has no stream for a character device that fits.
 * `net.Socket({ fd })` refuses it (libuv classes a character device as a
 * FILE: ERR_INVALID_FD_TYPE, on Node 18 and 20 alike); fs streams read in
 * the thread pool, where a blocking read() of an idle port cannot be
 * cancelled (close() leaves the port held, EBUSY for the next opener, and
 * the process cannot exit), and with O_NONBLOCK an fs stream fails on the
 * first EAGAIN. So the port goes through the project's addon, non-blocking
 * and poll-driven (openCharDevice's machinery), with backpressure both ways.
 *
 * The port's own rules (drivers/char/virtio_console.c): while the host end
 * is not connected, read() returns 0 (EOF) at once and write() EAGAIN; once
 * connected, an idle read is EAGAIN; after hot-unplug, read() is ENODEV. A
 * first EOF thus means "nobody on the host yet", not "done": openPort waits
 * for the host before it hands out the stream. After that an EOF is the
 * host hanging up, and the stream is destroyed, since a port has no
 * half-close and a write would never complete.
 */

/** Port names become file names (/dev/virtio-ports/<name>): one path component of a plain alphabet. */
export const MAX_PORT_NAME = 127;
const PORT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Why `name` cannot be a port name, or undefined when it can; shared with the host side, which names ports. */
export function portNameProblem(name: string): string | undefined {
  if (name.length > MAX_PORT_NAME || !PORT_NAME.test(name)) {
    return `port name ${JSON.stringify(name.slice(0, MAX_PORT_NAME + 1))} must be 1 to ${MAX_PORT_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit (it is a file name under /dev/virtio-ports)`;
  }
  return undefined;
}

export interface FindPortOptions {
  /** Where sysfs is mounted; default /sys. */
  sysfs?: string;
  /** Where the device nodes are; default /dev. */
  dev?: string;
  /** How long a hot-plugged port may take to appear; default 10 s. */
  timeoutMs?: number;
  /** Between looks; default 20 ms. */
  intervalMs?: number;
  signal?: AbortSignal;
}

/** The device node of the virtio-serial port named `name`, waiting for it to appear. */
export async function findPort(name: string, opts: FindPortOptions = {}): Promise<string> {
  const problem = portNameProblem(name);
  if (problem) throw new Error(problem);
  const classDir = path.join(opts.sysfs ?? '/sys', 'class', 'virtio-ports');
  const dev = opts.dev ?? '/dev';
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ports = await portNames(classDir);
    const port = [...ports].find(([, n]) => n === name)?.[0];
    // devtmpfs makes the node a moment after sysfs shows the port.
    if (port && existsSync(path.join(dev, port))) return path.join(dev, port);
    if (Date.now() >= deadline) {
      const seen = [...ports].map(([p, n]) => `${p}=${n ?? '(unnamed)'}`).join(', ') || 'none';
      const why = port ? `${classDir}/${port} names it, but ${path.join(dev, port)} did not appear` : `no port of that name appeared (ports: ${seen})`;
      throw new Error(`virtio-serial port ${name}: ${why} within ${timeoutMs} ms`);
    }
    await sleep(opts.intervalMs ?? 20, undefined, opts.signal ? { signal: opts.signal } : {});
  }
}

/** vportNpM → its name (undefined until the host names it); empty when virtio_console is not loaded. */
async function portNames(classDir: string): Promise<Map<string, string | undefined>> {
  const found = new Map<string, string | undefined>();
  let entries: string[];
  try {
    entries = await readdir(classDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return found;
    throw err;
  }
  for (const entry of entries.sort()) {
    if (!/^vport\d+p\d+$/.test(entry)) continue;
    try {
      found.set(entry, (await readFile(path.join(classDir, entry, 'name'), 'utf8')).trim() || undefined);
    } catch (err) {
      // The name attribute appears only once the host names the port, and the port may go meanwhile.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENODEV') throw err;
      found.set(entry, undefined);
    }
  }
  return found;
}

export interface OpenPortOptions {
  /** How long to wait for the host end to connect; default 10 s. */
  hostTimeoutMs?: number;
  /** Between looks while the host is not connected; default 20 ms. */
  intervalMs?: number;
}

/**
 * The port as a Duplex, once the host end is connected. Rejects when the
 * port cannot be opened (EBUSY: someone else has it open; a port takes one
 * opener) or the host does not connect in time.
 */
export async function openPort(devicePath: string, opts: OpenPortOptions = {}): Promise<VportStream> {
  let handle: NativeHandle | number;
  try {
    handle = requireBinding().openDevice(devicePath);
  } catch (cause) {
    // The addon throws when libuv cannot watch the fd: epoll takes no regular file or /dev/null.
    throw new Error(`${devicePath}: cannot be watched for readiness (${(cause as Error).message}); is it a virtio-serial port?`, { cause });
  }
  if (typeof handle === 'number') throw portError(handle, 'open', devicePath);
  let first: Buffer;
  try {
    first = await waitForHost(handle, devicePath, opts);
  } catch (err) {
    handle.close();
    throw err;
  }
  const stream = new VportStream(handle, devicePath);
  if (first.length > 0) stream.unshift(first);
  stream.once('end', () => stream.destroy());
  return stream;
}

/** The port's stream: the socket stream's machinery, with errors that name the device rather than a vsock address. */
export class VportStream extends VsockSocket {
  constructor(
    handle: NativeHandle,
    readonly devicePath: string,
  ) {
    super(handle, { cid: VMADDR_CID_ANY, port: VMADDR_PORT_ANY }, { allowHalfOpen: false });
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const code = (err as NodeJS.ErrnoException | null)?.code;
    if (err && code && !err.message.includes(this.devicePath)) {
      err.message = `${err.message.replace(` vsock ${formatAddress(this.remote)}`, '')} (${this.devicePath})${HINTS[code] ?? ''}`;
    }
    super._destroy(err, cb);
  }
}

/** Probe reads until the host is there: EAGAIN (connected, idle) or its first bytes, which are handed back to go first. */
async function waitForHost(handle: NativeHandle, devicePath: string, opts: OpenPortOptions): Promise<Buffer> {
  const timeoutMs = opts.hostTimeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = handle.read();
    if (Buffer.isBuffer(got)) return got;
    if (got === EAGAIN) return Buffer.alloc(0);
    if (typeof got === 'number') throw portError(got, 'read', devicePath);
    if (Date.now() >= deadline) {
      throw Object.assign(new Error(`${devicePath}: the host end of the port did not connect within ${timeoutMs} ms`), { code: 'ETIMEDOUT' });
    }
    await sleep(opts.intervalMs ?? 20);
  }
}

/** What an errno means for a port, said after the error. */
const HINTS: Readonly<Record<string, string>> = {
  EBUSY: ': another process has the port open, and a port takes one opener',
  ENODEV: ': the port was unplugged',
};

function portError(negErrno: number, syscall: string, devicePath: string): Error {
  const err = vsockError(negErrno, syscall);
  err.message = `${err.message} (${devicePath})${HINTS[err.code] ?? ''}`;
  return err;
}
