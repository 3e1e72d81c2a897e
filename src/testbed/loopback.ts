import net from 'node:net';

/** TCP on the host's loopback, as the network tests' host side uses it. */

/** A TCP port free on the host's loopback now (1024 and up: a daemon run as a user cannot forward from lower). */
export async function freePort(): Promise<number> {
  for (;;) {
    const s = net.createServer();
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    const port = (s.address() as net.AddressInfo).port;
    await new Promise((resolve) => s.close(resolve));
    if (port >= 1024) return port;
  }
}

/** A server on 127.0.0.1 that sends `line` and a newline to each client and hangs up. */
export async function serveLine(line: string): Promise<{ port: number; close(): void }> {
  const server = net.createServer((sock) => sock.end(`${line}\n`));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, close: () => void server.close() };
}

/** Read what a TCP server on 127.0.0.1:`port` sends until it hangs up, after sending `say` (if any). */
export function readFrom(port: number, timeoutMs = 20_000, say?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const sock = net.connect(port, '127.0.0.1');
    if (say !== undefined) sock.once('connect', () => sock.write(say));
    sock.setTimeout(timeoutMs, () => sock.destroy(new Error('timed out')));
    sock.on('data', (d) => (got += d.toString()));
    sock.on('end', () => resolve(got));
    sock.on('error', reject);
  });
}
