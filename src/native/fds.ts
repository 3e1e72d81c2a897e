import type net from 'node:net';
import { errnoError, requireAddon } from './addon.js';

/**
 * Descriptors the daemon holds as numbers: a tap's queue from the helper,
 * passed on to a VMM over its control socket with SCM_RIGHTS (QEMU's
 * `getfd`, cloud-hypervisor's `vm.add-net`).
 */
interface FdsBinding {
  tapOpen(name: string): number;
  sendFds(sockfd: number, data: Buffer, fds: number[]): number;
}

const binding = (what: string) => requireAddon<FdsBinding>(what);

/** One queue of the existing tap `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR); the kernel allows its owner only. */
export function openTap(name: string): number {
  const fd = binding('opening a tap').tapOpen(name);
  if (fd < 0) throw errnoError(fd, `attaching to tap ${name}`);
  return fd;
}


/**
 * The kernel descriptor under a connected net.Socket (a Pipe handle for Unix
 * sockets, a TCP one otherwise). `_handle.fd` is libuv's, on Linux, in Node
 * 18 and 20 alike (stream_wrap's fd getter); it is not public API, so
 * anything else is refused.
 */
export function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0) throw new Error('the socket has no descriptor (not connected, or closed)');
  return fd;
}

/**
 * Write `data` on a connected Unix stream socket with `fds` attached as
 * SCM_RIGHTS, in stream order: only once Node's own write queue is empty,
 * and the whole of `data` (what a short sendmsg left is written normally,
 * the descriptors having gone with its first byte).
 */
export async function sendWithFds(socket: net.Socket, data: Buffer, fds: number[], timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
  while (socket.writableLength > 0) {
    if (Date.now() > deadline) throw new Error(`could not send descriptors within ${timeoutMs} ms: the socket's write queue did not drain`);
    await wait(5);
  }
  for (;;) {
    const n = binding('passing descriptors').sendFds(socketFd(socket), data, fds);
    if (n >= 0) {
      if (n < data.length) socket.write(data.subarray(n));
      return;
    }
    const err = errnoError(n, 'sendmsg with SCM_RIGHTS');
    if (err.code !== 'EAGAIN' || Date.now() > deadline) throw err;
    await wait(5);
  }
}
