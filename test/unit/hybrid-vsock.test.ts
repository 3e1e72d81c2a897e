import net from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { connectHybridVsock, guestListenPath, listenHybridVsock, removeStaleSocket } from '../../src/transport/hybrid-vsock.js';

/**
 * cloud-hypervisor's vsock muxer cannot run here; this stand-in speaks the
 * documented host-initiated handshake (`CONNECT <port>\n` → `OK <port>\n`,
 * see the reference's hybrid vsock notes) and then echoes.
 */
function fakeMuxer(file: string, reply: (port: number) => string): Promise<net.Server> {
  const server = net.createServer((s) => {
    let line = '';
    s.on('data', function onData(c) {
      line += c.toString();
      const nl = line.indexOf('\n');
      if (nl < 0) return;
      s.off('data', onData);
      const port = Number(/^CONNECT (\d+)$/.exec(line.slice(0, nl))?.[1]);
      s.write(reply(port) + 'early-bytes');
      s.pipe(s);
    });
  });
  return new Promise((resolve) => server.listen(file, () => resolve(server)));
}

const servers: net.Server[] = [];
afterEach(() => servers.splice(0).forEach((s) => s.close()));

describe('hybrid vsock', () => {
  it('host-initiated connect writes CONNECT and keeps bytes that follow OK', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hv-'));
    servers.push(await fakeMuxer(path.join(dir, 'vm.vsock'), (p) => `OK ${p + 1000}\n`));
    const s = await connectHybridVsock(path.join(dir, 'vm.vsock'), 1234);
    const got = await new Promise<string>((resolve) => {
      let all = '';
      s.on('data', (c) => {
        all += c.toString();
        if (all.includes('ping')) resolve(all);
      });
      s.resume();
      s.write('ping');
    });
    expect(got).toBe('early-bytesping');
    s.destroy();
  });

  it('reports a refused CONNECT with the muxer\'s words', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hv-'));
    servers.push(await fakeMuxer(path.join(dir, 'vm.vsock'), () => 'NO\n'));
    await expect(connectHybridVsock(path.join(dir, 'vm.vsock'), 9)).rejects.toThrow(/refused CONNECT 9: "NO"/);
  });

  it('guest connections arrive on <socket>_<port>, replacing a stale socket but never a live one', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hv-'));
    const sock = path.join(dir, 'vm.vsock');
    expect(guestListenPath(sock, 5000)).toBe(`${sock}_5000`);
    const seen: string[] = [];
    const server = await listenHybridVsock(sock, 5000, (s) => s.on('data', (c) => seen.push(c.toString())));
    servers.push(server);
    await expect(listenHybridVsock(sock, 5000, () => undefined)).rejects.toThrow(/in use by another process/);
    const c = net.connect(`${sock}_5000`);
    c.write('hi');
    await new Promise((r) => setTimeout(r, 50));
    expect(seen).toEqual(['hi']);
    c.destroy();
    writeFileSync(path.join(dir, 'plain'), 'x');
    await expect(removeStaleSocket(path.join(dir, 'plain'))).rejects.toThrow(/not a socket/);
  });
});
