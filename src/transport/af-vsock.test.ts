import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, it, expect } from 'vitest';
import {
  VMADDR_CID_ANY,
  VMADDR_CID_HOST,
  VMADDR_CID_LOCAL,
  VMADDR_PORT_ANY,
  VsockServer,
  VsockSocket,
  connectVsock,
  createTestSocketPair,
  localCid,
  vsockAddonPath,
  vsockAvailable,
  type VsockError,
} from './af-vsock.js';

// These tests need the real addon: it is built by `npm install`, so a missing
// build is a failure here, never a skip.

const EAGAIN = -osConstants.errno.EAGAIN;
const READABLE = 1; // UV_READABLE
const WRITABLE = 2; // UV_WRITABLE

interface RawHandle {
  watch(events: number): number;
  localAddress(): [number, number] | number;
  fd(): number;
  close(): void;
  setRef(on: boolean): void;
}
interface RawBinding {
  READABLE: number;
  WRITABLE: number;
  listen(cid: number, port: number, backlog: number): RawHandle | [number, string];
}

function rawBinding(): RawBinding {
  const path = vsockAddonPath();
  if (path === undefined) throw new Error('addon path unknown');
  return createRequire(import.meta.url)(path) as RawBinding;
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

async function rejection(p: Promise<unknown>): Promise<VsockError> {
  try {
    await p;
  } catch (err) {
    return err as VsockError;
  }
  throw new Error('expected the promise to reject');
}

function nextTicks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

type NativeHandleLike = ConstructorParameters<typeof VsockSocket>[0];

/** Scripted stand-in for the native handle, to drive VsockSocket's stream logic. */
class FakeHandle implements NativeHandleLike {
  onevent: ((status: number, events: number) => void) | undefined;
  events = 0;
  closes = 0;
  shutdowns = 0;
  soError = 0;
  reads: Array<Buffer | null | number> = [];
  written: Buffer[] = [];
  /** Bytes the "kernel" accepts before answering EAGAIN; reset by tests. */
  budget = Number.POSITIVE_INFINITY;

  watch(events: number): number {
    this.events = events;
    return 0;
  }
  read(): Buffer | null | number {
    return this.reads.length > 0 ? (this.reads.shift() as Buffer | null | number) : EAGAIN;
  }
  writev(chunks: Buffer[]): number {
    if (this.budget <= 0) return EAGAIN;
    let n = 0;
    for (const chunk of chunks) {
      const take = Math.min(chunk.length, this.budget - n);
      this.written.push(Buffer.from(chunk.subarray(0, take)));
      n += take;
      if (take < chunk.length) break;
    }
    this.budget -= n;
    return n;
  }
  accept(): number {
    return EAGAIN;
  }
  connectError(): number {
    return this.soError;
  }
  shutdown(): number {
    this.shutdowns++;
    return 0;
  }
  localAddress(): [number, number] {
    return [3, 5000];
  }
  close(): void {
    this.closes++;
  }
  setRef(): void {}
  fd(): number {
    return this.closes > 0 ? -1 : 42;
  }
  fire(events: number, status = 0): void {
    this.onevent?.(status, events);
  }
}

describe('addon and kernel', () => {
  it('loads the addon and the kernel supports AF_VSOCK', () => {
    expect(vsockAvailable()).toEqual({ ok: true });
  });

  it('exports the well-known CIDs', () => {
    expect(VMADDR_CID_ANY).toBe(0xffffffff);
    expect(VMADDR_CID_LOCAL).toBe(1);
    expect(VMADDR_CID_HOST).toBe(2);
  });

  it('reports the local CID, or a coded error saying why not', () => {
    try {
      const cid = localCid();
      expect(Number.isInteger(cid)).toBe(true);
      expect(cid).toBeGreaterThan(VMADDR_CID_HOST);
    } catch (err) {
      expect((err as VsockError).code).toMatch(/^E[A-Z]+$/);
      expect((err as VsockError).syscall).toMatch(/dev\/vsock|ioctl/);
    }
  });
});

describe('VsockServer', () => {
  it('listens on a kernel-chosen port and reports it', async () => {
    const server = new VsockServer();
    const listening = new Promise<void>((resolve) => server.once('listening', resolve));
    await server.listen(VMADDR_PORT_ANY);
    await listening;
    const addr = server.address();
    expect(addr.cid).toBe(VMADDR_CID_ANY);
    expect(addr.port).not.toBe(VMADDR_PORT_ANY);
    expect(server.listening).toBe(true);
    await server.close();
    expect(server.listening).toBe(false);
  });

  it('listens on an explicit free port, and close() releases it', async () => {
    const probe = new VsockServer();
    await probe.listen(VMADDR_PORT_ANY);
    const { port } = probe.address();
    await probe.close();

    const first = new VsockServer();
    await first.listen(port);
    expect(first.address()).toEqual({ cid: VMADDR_CID_ANY, port });
    const closed = new Promise<void>((resolve) => first.once('close', resolve));
    await first.close();
    await closed;

    const again = new VsockServer();
    await again.listen(port);
    expect(again.address().port).toBe(port);
    await again.close();
  });

  it('fails with EADDRINUSE when the port is taken', async () => {
    const first = new VsockServer();
    await first.listen(VMADDR_PORT_ANY);
    const second = new VsockServer();
    const err = await rejection(second.listen(first.address().port));
    expect(err.code).toBe('EADDRINUSE');
    expect(err.syscall).toBe('bind');
    expect(err.port).toBe(first.address().port);
    expect(second.listening).toBe(false);
    await first.close();
  });

  it('refuses to listen twice on one server and to report an address when idle', async () => {
    const server = new VsockServer();
    expect(() => server.address()).toThrow(expect.objectContaining({ code: 'ERR_SERVER_NOT_RUNNING' }));
    await server.listen(VMADDR_PORT_ANY);
    const err = await rejection(server.listen(VMADDR_PORT_ANY));
    expect(err.code).toBe('ERR_SERVER_ALREADY_LISTEN');
    await server.close();
    await server.close(); // idempotent
  });

  it('rejects out-of-range ports', async () => {
    const server = new VsockServer();
    await expect(server.listen(-1)).rejects.toThrow(RangeError);
    await expect(server.listen(1.5)).rejects.toThrow(RangeError);
  });
});

describe('connectVsock', () => {
  const unreachable = [
    ['the loopback CID (no loopback transport on this host)', VMADDR_CID_LOCAL],
    ['an unassigned CID', 4242],
  ] as const;

  for (const [what, cid] of unreachable) {
    it(`rejects with a coded error for ${what} within the timeout`, async () => {
      const started = Date.now();
      const err = await rejection(connectVsock(cid, 9999, { timeoutMs: 1500 }));
      const elapsed = Date.now() - started;
      expect(['ETIMEDOUT', 'ENODEV', 'ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH']).toContain(err.code);
      expect(err.syscall).toBe('connect');
      expect(err.cid).toBe(cid);
      expect(err.port).toBe(9999);
      expect(err.message).toContain(err.code);
      expect(elapsed).toBeLessThan(1500 + 1000);
    }, 10_000);
  }

  it('stops waiting when the signal aborts', async () => {
    const controller = new AbortController();
    const started = Date.now();
    const pending = connectVsock(4242, 9999, { signal: controller.signal, timeoutMs: 5000 });
    setTimeout(() => controller.abort(), 50);
    const err = await rejection(pending);
    expect(err.name).toBe('AbortError');
    expect(err.code).toBe('ABORT_ERR');
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('rejects at once for an already-aborted signal and for bad arguments', async () => {
    const err = await rejection(connectVsock(4242, 9999, { signal: AbortSignal.abort() }));
    expect(err.code).toBe('ABORT_ERR');
    await expect(connectVsock(-1, 1)).rejects.toThrow(RangeError);
    await expect(connectVsock(4242, 2 ** 32)).rejects.toThrow(RangeError);
    await expect(connectVsock(4242, 1, { timeoutMs: 0 })).rejects.toThrow(RangeError);
  });
});

describe('VsockSocket stream logic (scripted handle)', () => {
  it('exposes addresses and is harmless to destroy twice', async () => {
    const handle = new FakeHandle();
    const socket = new VsockSocket(handle, { cid: 7, port: 1024 });
    expect(socket.remote).toEqual({ cid: 7, port: 1024 });
    expect(socket.local).toEqual({ cid: 3, port: 5000 });
    let closeEvents = 0;
    socket.on('close', () => closeEvents++);
    socket.destroy();
    socket.destroy();
    await nextTicks();
    expect(handle.closes).toBe(1);
    expect(handle.onevent).toBeUndefined();
    expect(closeEvents).toBe(1);
  });

  it('reads until EAGAIN, stops polling under backpressure, and ends on EOF', async () => {
    const handle = new FakeHandle();
    const socket = new VsockSocket(handle, { cid: 7, port: 1 });
    const chunk = Buffer.alloc(64 * 1024, 1);
    handle.reads.push(chunk, chunk, chunk);
    socket.read(0); // ask for data without consuming it
    expect(handle.events & READABLE).toBe(READABLE);
    handle.fire(READABLE);
    // One full high-water mark is buffered: no more reads, no more polling.
    expect(handle.reads.length).toBe(2);
    expect(handle.events & READABLE).toBe(0);

    const received: Buffer[] = [];
    socket.on('data', (d: Buffer) => received.push(d));
    const ended = new Promise<void>((resolve) => socket.once('end', resolve));
    await nextTicks();
    expect(handle.events & READABLE).toBe(READABLE);
    handle.reads.push(null);
    handle.fire(READABLE);
    await ended;
    expect(Buffer.concat(received).length).toBe(3 * 64 * 1024);
    expect(handle.events & READABLE).toBe(0);
  });

  it('waits for POLLOUT on EAGAIN and completes the write callback only when all bytes are out', async () => {
    const handle = new FakeHandle();
    const socket = new VsockSocket(handle, { cid: 7, port: 1 });
    const payload = Buffer.from(Array.from({ length: 200_000 }, (_, i) => i % 251));
    handle.budget = 10_000;
    let done: Error | null | undefined;
    socket.write(payload, (err) => {
      done = err ?? null;
    });
    expect(done).toBeUndefined();
    expect(handle.events & WRITABLE).toBe(WRITABLE);
    for (let i = 0; i < 100 && done === undefined; i++) {
      handle.budget = 10_000;
      handle.fire(WRITABLE);
      await nextTicks();
    }
    expect(done).toBeNull();
    expect(Buffer.concat(handle.written).equals(payload)).toBe(true);
    expect(handle.events & WRITABLE).toBe(0);
  });

  it('batches queued writes and shuts down the write side on end()', async () => {
    const handle = new FakeHandle();
    const socket = new VsockSocket(handle, { cid: 7, port: 1 }, { allowHalfOpen: true });
    handle.budget = 0;
    socket.write('a');
    socket.write('b');
    socket.write('c');
    handle.budget = Number.POSITIVE_INFINITY;
    const finished = new Promise<void>((resolve) => socket.once('finish', resolve));
    socket.end('d');
    handle.fire(WRITABLE);
    await finished;
    expect(Buffer.concat(handle.written).toString()).toBe('abcd');
    expect(handle.shutdowns).toBe(1);
    socket.destroy();
  });

  it('fails the in-flight write, without an error event, when destroyed mid-write', async () => {
    const handle = new FakeHandle();
    const socket = new VsockSocket(handle, { cid: 7, port: 1 });
    handle.budget = 0;
    const errors: Error[] = [];
    socket.on('error', (e) => errors.push(e));
    const writeResult = new Promise<Error | null | undefined>((resolve) => socket.write('x', resolve));
    socket.destroy();
    const err = await writeResult;
    expect(err).toBeInstanceOf(Error);
    await nextTicks();
    expect(errors).toEqual([]);
    expect(handle.closes).toBe(1);
  });

  it('turns read errors and poll errors into coded stream errors', async () => {
    const reset = new FakeHandle();
    const s1 = new VsockSocket(reset, { cid: 7, port: 1 });
    const e1 = new Promise<VsockError>((resolve) => s1.once('error', (e) => resolve(e as VsockError)));
    s1.resume();
    await nextTicks(); // resume() starts the flow, and so _read(), on a later tick
    reset.reads.push(-osConstants.errno.ECONNRESET);
    reset.fire(READABLE);
    expect((await e1).code).toBe('ECONNRESET');
    expect(reset.closes).toBe(1);

    const pollErr = new FakeHandle();
    const s2 = new VsockSocket(pollErr, { cid: 7, port: 1 });
    const e2 = new Promise<VsockError>((resolve) => s2.once('error', (e) => resolve(e as VsockError)));
    pollErr.soError = -osConstants.errno.ETIMEDOUT;
    pollErr.fire(0, -osConstants.errno.EBADF);
    const err2 = await e2;
    expect(err2.code).toBe('ETIMEDOUT');
    expect(err2.cid).toBe(7);
  });
});

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Writes `payload` in uneven pieces honouring backpressure, then ends. */
async function sendAll(socket: VsockSocket, payload: Buffer): Promise<void> {
  for (let off = 0; off < payload.length; ) {
    const size = Math.min(payload.length - off, 1000 + ((off * 7) % 70_000));
    if (!socket.write(payload.subarray(off, off + size))) {
      await new Promise((resolve) => socket.once('drain', resolve));
    }
    off += size;
  }
  await new Promise<void>((resolve) => socket.end(resolve));
}

/** Collects everything up to EOF; unlike for-await it leaves the socket open. */
function receiveAll(socket: VsockSocket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  return new Promise((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
}

describe('VsockSocket data path (real addon, AF_UNIX stand-in)', () => {
  it('moves 1 MiB+ each way intact, with backpressure, and closes both ends', async () => {
    const before = openFds();
    const [a, b] = createTestSocketPair();
    const toB = randomBytes(1024 * 1024 + 4321);
    const toA = randomBytes(1024 * 1024 + 1234);
    let drains = 0;
    a.on('drain', () => drains++);
    const closed = Promise.all([a, b].map((s) => new Promise((resolve) => s.once('close', resolve))));
    const [gotA, gotB] = await Promise.all([receiveAll(a), receiveAll(b), sendAll(a, toB), sendAll(b, toA)]);
    expect(sha256(gotB)).toBe(sha256(toB));
    expect(sha256(gotA)).toBe(sha256(toA));
    expect(drains).toBeGreaterThan(0); // the kernel buffer really filled up
    await closed;
    expect(a.destroyed && b.destroyed).toBe(true);
    await nextTicks();
    expect(openFds()).toBe(before);
  }, 20_000);

  it('keeps the write side open after EOF when allowHalfOpen is set', async () => {
    const [a, b] = createTestSocketPair({ allowHalfOpen: true });
    a.end('question');
    const question = await receiveAll(b);
    expect(question.toString()).toBe('question');
    const answer = receiveAll(a);
    b.end('answer');
    expect((await answer).toString()).toBe('answer');
    a.destroy();
    b.destroy();
  });

  it('survives destroy() in the middle of reading, twice', async () => {
    const before = openFds();
    const [a, b] = createTestSocketPair();
    const errors: Error[] = [];
    a.on('error', (e) => errors.push(e));
    b.on('error', (e) => errors.push(e));
    a.write(randomBytes(256 * 1024));
    const bClosed = new Promise((resolve) => b.once('close', resolve));
    await new Promise<void>((resolve) => {
      b.once('data', () => {
        b.destroy();
        b.destroy();
        resolve();
      });
    });
    await bClosed;
    a.destroy();
    a.destroy();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(openFds()).toBe(before);
    // a may see EPIPE for data in flight when b vanished; nothing else.
    for (const e of errors) expect((e as VsockError).code).toBe('EPIPE');
  });

  it('reports EPIPE when writing to a socket whose peer has gone', async () => {
    const [a, b] = createTestSocketPair();
    b.destroy();
    const err = await new Promise<VsockError>((resolve) => {
      a.on('error', (e) => resolve(e as VsockError));
      a.write('hello?');
    });
    expect(err.code).toBe('EPIPE');
    expect(err.syscall).toBe('write');
  });
});

describe('handle hygiene (real addon)', () => {
  it('closes every fd it opened', async () => {
    const before = openFds();
    const servers = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const s = new VsockServer();
        await s.listen(VMADDR_PORT_ANY);
        return s;
      }),
    );
    expect(openFds()).toBeGreaterThanOrEqual(before + 10);
    await Promise.all(servers.map((s) => s.close()));
    await Promise.all([1, 2, 3].map((i) => rejection(connectVsock(4242, 9000 + i, { timeoutMs: 200 }))));
    await nextTicks();
    expect(openFds()).toBe(before);
  }, 10_000);

  it('closes the fd of a handle that is garbage-collected without close()', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const binding = rawBinding();
    const before = openFds();
    (() => {
      for (let i = 0; i < 20; i++) {
        const h = binding.listen(VMADDR_CID_ANY, VMADDR_PORT_ANY, 1);
        if (Array.isArray(h)) throw new Error(`listen failed: ${h.join(' ')}`);
        // Watch and unwatch so the pin/unpin path is exercised before the drop.
        expect(h.watch(binding.READABLE)).toBe(0);
        expect(h.watch(0)).toBe(0);
      }
    })();
    expect(openFds()).toBe(before + 20);
    for (let i = 0; i < 10 && openFds() > before; i++) {
      gc();
      await nextTicks();
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(openFds()).toBe(before);
  });

  it('tears down watched handles cleanly when a worker or the process exits', () => {
    const addon = JSON.stringify(vsockAddonPath());
    const script = `
      const { Worker } = require('node:worker_threads');
      const workerCode = 'const b = require(' + JSON.stringify(${addon}) + ');' +
        'const h = b.listen(0xffffffff, 0xffffffff, 4); h.watch(b.READABLE); setTimeout(() => process.exit(0), 20);';
      const w = new Worker(workerCode, { eval: true });
      w.on('exit', (code) => {
        const b = require(${addon});
        const h = b.listen(0xffffffff, 0xffffffff, 4);
        h.watch(b.READABLE);
        h.setRef(false); // let the loop end while the handle is still watched
        console.log('worker exit ' + code);
      });
    `;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('worker exit 0');
    expect(r.status).toBe(0);
  });
});

describe('openCharDevice', () => {
  it('streams a pollable device non-blockingly, both ways (a FIFO opened read-write stands in for a port)', async () => {
    const { openCharDevice } = await import('./af-vsock.js');
    const { runProgram } = await import('../exec.js');
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const fifo = `${mkdtempSync(`${tmpdir()}/fifo-`)}/port`;
    await runProgram('mkfifo', [fifo]);
    const dev = openCharDevice(fifo);
    const got = new Promise<string>((resolve) => dev.once('data', (c: Buffer) => resolve(c.toString())));
    dev.write(Buffer.from('frame'));
    expect(await got).toBe('frame');
    dev.destroy();
    dev.destroy();
  });

  it('says which device it could not open', async () => {
    const { openCharDevice } = await import('./af-vsock.js');
    expect(() => openCharDevice('/dev/virtio-ports/does-not-exist')).toThrow(/ENOENT.*does-not-exist/);
  });
});
