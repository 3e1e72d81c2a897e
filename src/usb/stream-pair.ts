import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';

/**
 * Both ends of one connected stream socket in this process, for handing one
 * end (or both) to the kernel's USB/IP drivers, which take a connected
 * SOCK_STREAM socket's fd (usbip_sockfd, vhci-hcd's attach). Node has no
 * socketpair(2): a listener is made, connected to and closed at once. A Unix
 * socket in a private folder needs no network; TCP needs the loopback up.
 */
export type StreamKind = 'tcp' | 'unix';

/** Both ends of one connected stream in this process: TCP on the loopback, or a Unix socket in a private folder. */
export async function streamPair(kind: StreamKind): Promise<[net.Socket, net.Socket]> {
  const dir = kind === 'unix' ? mkdtempSync(path.join(tmpdir(), 'xdpvm-usbip-')) : undefined;
  const server = net.createServer();
  try {
    const where = dir ? { path: path.join(dir, 'pair.sock') } : { host: '127.0.0.1', port: 0 };
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(where, resolve));
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    const address = server.address();
    const client = dir ? net.connect(path.join(dir, 'pair.sock')) : net.connect((address as net.AddressInfo).port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => client.once('error', reject).once('connect', resolve));
    return [client, await accepted];
  } finally {
    server.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Bytes both ways between two streams, each one's backpressure holding the
 * other; either end erring or closing ends both, and `onEnd` hears why,
 * once. `names` say which end is which in that sentence.
 */
export function relayBoth(a: Duplex, b: Duplex, names: [string, string], onEnd: (why: string) => void): () => void {
  let ended = false;
  const end = (why: string) => {
    if (ended) return;
    ended = true;
    onEnd(why);
    a.destroy();
    b.destroy();
  };
  a.on('error', (err: Error) => end(`${names[0]}: ${err.message}`));
  b.on('error', (err: Error) => end(`${names[1]}: ${err.message}`));
  a.on('close', () => end(`${names[0]} closed`));
  b.on('close', () => end(`${names[1]} closed`));
  a.pipe(b);
  b.pipe(a);
  return () => end('closed here');
}

/**
 * Dial until the peer takes the connection, for as long as `asked` (the
 * request that makes the peer listen) is pending, and at most `timeoutMs`:
 * a request that failed stops the dialling, and its own error is what the
 * caller hears, since it says more than a refused dial.
 */
export async function dialWhileAsked<T extends Duplex>(dial: () => Promise<T>, asked: Promise<unknown>, what: string, opts: { timeoutMs: number; retryMs: number }): Promise<T> {
  let answered: { err?: unknown } | undefined;
  asked.then(
    () => (answered = {}),
    (err: unknown) => (answered = { err }),
  );
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    let stream: T | undefined;
    let refused: Error = new Error('no connection');
    try {
      stream = await dial();
    } catch (err) {
      refused = err as Error;
    }
    if (answered?.err) {
      stream?.destroy();
      throw answered.err;
    }
    if (stream) return stream;
    if (answered) throw new Error(`the request was answered, but ${what} took no connection: ${refused.message}`);
    if (Date.now() > deadline) throw new Error(`could not connect to ${what} within ${opts.timeoutMs / 1000} s: ${refused.message}`);
    await sleep(opts.retryMs);
  }
}
