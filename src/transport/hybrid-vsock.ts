import net from 'node:net';
import { lstatSync, unlinkSync } from 'node:fs';

/**
 * Hybrid vsock as cloud-hypervisor and Firecracker implement it: the VMM
 * multiplexes the guest's vsock device onto Unix sockets. A guest connection
 * to host port P arrives on `<socket>_<P>`; a host connection to guest port P
 * is made on `<socket>` by writing `CONNECT P\n` and reading `OK <n>\n`.
 * The socket path identifies the VM: nothing the guest sends does.
 */
export function guestListenPath(socket: string, port: number): string {
  return `${socket}_${port}`;
}

/** Remove a socket file left by a dead process, but never a live one or a non-socket. */
export async function removeStaleSocket(file: string): Promise<void> {
  let isSocket = false;
  try {
    isSocket = lstatSync(file).isSocket();
  } catch {
    return;
  }
  if (!isSocket) throw new Error(`${file} exists and is not a socket; refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(file);
    probe.once('connect', () => (probe.destroy(), resolve(true)));
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`${file} is in use by another process`);
  unlinkSync(file);
}

export async function listenUnix(file: string, onConnection: (socket: net.Socket) => void): Promise<net.Server> {
  await removeStaleSocket(file);
  const server = net.createServer(onConnection);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, () => (server.off('error', reject), resolve()));
  });
  return server;
}

/** Host side: accept guest connections to `port` of the VM behind `socket`. */
export function listenHybridVsock(socket: string, port: number, onConnection: (s: net.Socket) => void): Promise<net.Server> {
  return listenUnix(guestListenPath(socket, port), onConnection);
}

const MAX_REPLY_LINE = 64;

/** Host side: connect to a port the guest listens on, through the VMM's muxer. */
export function connectHybridVsock(socket: string, port: number, opts: { timeoutMs?: number } = {}): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    let line = Buffer.alloc(0);
    const timer = setTimeout(() => fail(new Error(`no reply to CONNECT ${port} on ${socket} within ${opts.timeoutMs ?? 5000} ms`)), opts.timeoutMs ?? 5000);
    const fail = (err: Error) => {
      clearTimeout(timer);
      s.off('close', onClose);
      s.destroy();
      reject(err);
    };
    // The muxer hangs up without a word when nothing in the guest listens on the port.
    const onClose = () => fail(new Error(`VMM muxer on ${socket} closed the connection: nothing in the guest listens on port ${port}`));
    const onData = (chunk: Buffer) => {
      line = Buffer.concat([line, chunk]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length > MAX_REPLY_LINE) fail(new Error(`VMM muxer on ${socket} sent an overlong reply`));
        return;
      }
      s.off('data', onData);
      s.off('close', onClose);
      clearTimeout(timer);
      const reply = line.subarray(0, nl).toString('latin1');
      if (!/^OK \d+$/.test(reply)) return fail(new Error(`VMM muxer on ${socket} refused CONNECT ${port}: "${reply.slice(0, 60)}"`));
      const rest = line.subarray(nl + 1);
      if (rest.length) s.unshift(rest);
      s.pause();
      resolve(s);
    };
    s.once('error', (err) => fail(new Error(`cannot connect to ${socket}: ${err.message}`)));
    s.once('close', onClose);
    s.once('connect', () => s.write(`CONNECT ${port}\n`));
    s.on('data', onData);
  });
}
