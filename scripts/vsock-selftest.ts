/**
 * End-to-end AF_VSOCK check for a machine with a vsock loopback transport
 * (e.g. a QEMU guest with the vsock_loopback module): listen on a port,
 * connect to CID 1 on it, check the addresses each side sees, then move
 * 1 MiB + a few bytes each way at once and compare SHA-256 digests.
 *
 * Prints exactly one JSON line on stdout; exits 0 on success, 1 on failure.
 *
 *   node dist/scripts/vsock-selftest.js [--cid 1] [--port N] [--expect-peer-cid 1]
 *                                       [--bytes N] [--timeout-ms 30000]
 */
import { createHash, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { childLogger } from '../src/log.js';
import { Connection } from '../src/protocol/connection.js';
import { encodeFrame, FrameDecoder, MAX_FRAME_BYTES } from '../src/protocol/framing.js';
import { methodTable } from '../src/protocol/methods.js';
import { Ping, SESSION_METHODS } from '../src/protocol/session.js';
import {
  VMADDR_CID_LOCAL,
  VMADDR_PORT_ANY,
  VsockServer,
  connectVsock,
  localCid,
  vsockAddonPath,
  vsockAvailable,
  type VsockAddress,
  type VsockSocket,
} from '../src/transport/af-vsock.js';

interface Settings {
  cid: number;
  port: number;
  expectPeerCid: number;
  bytes: number;
  timeoutMs: number;
}

interface Report {
  ok: boolean;
  stage: string;
  error?: { message: string; code?: string };
  hint?: string;
  node: string;
  addon: string | undefined;
  settings?: Settings;
  localCid?: number | string;
  listen?: VsockAddress;
  client?: { local: VsockAddress; remote: VsockAddress };
  accepted?: { local: VsockAddress; remote: VsockAddress };
  checks: Record<string, boolean>;
  transfer?: Record<string, unknown>;
  elapsedMs?: number;
}

const report: Report = { ok: false, stage: 'start', node: process.version, addon: undefined, checks: {} };
const started = Date.now();

function intOption(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`--${name} must be a non-negative integer`);
  return n;
}

function readSettings(): Settings {
  const { values } = parseArgs({
    options: {
      cid: { type: 'string' },
      port: { type: 'string' },
      'expect-peer-cid': { type: 'string' },
      bytes: { type: 'string' },
      'timeout-ms': { type: 'string' },
    },
    strict: true,
  });
  const cid = intOption(values.cid, 'cid', VMADDR_CID_LOCAL);
  return {
    cid,
    port: intOption(values.port, 'port', VMADDR_PORT_ANY),
    // Over vsock_loopback the kernel stamps the peer with VMADDR_CID_LOCAL.
    expectPeerCid: intOption(values['expect-peer-cid'], 'expect-peer-cid', VMADDR_CID_LOCAL),
    bytes: intOption(values.bytes, 'bytes', 1024 * 1024 + 4099),
    timeoutMs: intOption(values['timeout-ms'], 'timeout-ms', 30_000),
  };
}

function finish(code: 0 | 1): void {
  report.elapsedMs = Date.now() - started;
  process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(code));
}

function fail(err: unknown): void {
  const e: Error & { code?: unknown } = err instanceof Error ? err : new Error(String(err));
  report.ok = false;
  report.error = { message: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}) };
  if (report.stage === 'connect' && ['ETIMEDOUT', 'ENODEV', 'ECONNRESET'].includes(report.error.code ?? '')) {
    report.hint =
      'no vsock loopback here: inside the guest run "modprobe vsock_loopback" (CONFIG_VSOCKETS_LOOPBACK)';
  }
  finish(1);
}

function nextConnection(server: VsockServer): Promise<VsockSocket> {
  return new Promise((resolve) => server.once('connection', resolve));
}

/** Writes in uneven pieces so partial writes and EAGAIN are exercised. */
async function sendAll(socket: VsockSocket, payload: Buffer): Promise<void> {
  for (let off = 0; off < payload.length; ) {
    const size = Math.min(payload.length - off, 1 + ((off * 31 + 4093) % 90_000));
    if (!socket.write(payload.subarray(off, off + size))) {
      await new Promise((resolve) => socket.once('drain', resolve));
    }
    off += size;
  }
  await new Promise<void>((resolve) => socket.end(resolve));
}

function receiveDigest(socket: VsockSocket): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  return new Promise((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      hash.update(chunk);
    });
    socket.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    socket.once('error', reject);
  });
}

function closed(socket: VsockSocket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.closed) resolve();
    else socket.once('close', () => resolve());
  });
}

function checkAddresses(settings: Settings, listen: VsockAddress, client: VsockSocket, accepted: VsockSocket): void {
  report.client = { local: client.local, remote: client.remote };
  report.accepted = { local: accepted.local, remote: accepted.remote };
  report.checks.clientRemoteIsTarget = client.remote.cid === settings.cid && client.remote.port === listen.port;
  report.checks.acceptedPeerCid = accepted.remote.cid === settings.expectPeerCid;
  report.checks.acceptedPeerPortIsClientPort = accepted.remote.port === client.local.port;
  report.checks.acceptedLocalPortIsListenPort = accepted.local.port === listen.port;
}

async function transfer(settings: Settings, client: VsockSocket, accepted: VsockSocket): Promise<void> {
  const up = randomBytes(settings.bytes);
  const down = randomBytes(settings.bytes + 7);
  const t0 = process.hrtime.bigint();
  const [atServer, atClient] = await Promise.all([
    receiveDigest(accepted),
    receiveDigest(client),
    sendAll(client, up),
    sendAll(accepted, down),
  ]);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const expectUp = createHash('sha256').update(up).digest('hex');
  const expectDown = createHash('sha256').update(down).digest('hex');
  report.checks.clientToServerIntact = atServer.bytes === up.length && atServer.sha256 === expectUp;
  report.checks.serverToClientIntact = atClient.bytes === down.length && atClient.sha256 === expectDown;
  report.transfer = {
    clientToServer: { sent: up.length, received: atServer.bytes, sha256: atServer.sha256, expected: expectUp },
    serverToClient: { sent: down.length, received: atClient.bytes, sha256: atClient.sha256, expected: expectDown },
    seconds,
    mibPerSecond: (up.length + down.length) / (1024 * 1024) / seconds,
  };
}

/**
 * The protocol over AF_VSOCK: a handshake and a request through the real
 * connection layer, then a frame of exactly the cap (accepted) and a header
 * announcing one byte more (refused before any payload is read).
 */
async function frames(cid: number, guestSide: VsockSocket, hostSide: VsockSocket): Promise<void> {
  const log = childLogger({ selftest: 'frames' });
  const methods = methodTable(SESSION_METHODS);
  const host = new Connection({ role: 'host', stream: hostSide, methods, handlers: new Map([[Ping.name, async (p: unknown) => p]]), log });
  const guest = new Connection({ role: 'guest', stream: guestSide, methods, log });
  const accepted = host.acceptGuest('selftest');
  const welcome = await guest.helloAsGuest({ name: 'selftest', version: '1' });
  await accepted;
  report.checks.handshakeOverVsock = welcome.vm === 'selftest';
  report.checks.requestOverVsock = (await guest.request(Ping, { seq: 42 })).seq === 42;
  guest.close('raw frames next');
  host.close('raw frames next');

  const again = new VsockServer();
  await again.listen(VMADDR_PORT_ANY);
  const acceptedRaw = nextConnection(again);
  const sender = await connectVsock(cid, again.address().port, { timeoutMs: 5000 });
  const receiver = await acceptedRaw;
  await again.close();
  const atCap = 'x'.repeat(MAX_FRAME_BYTES - 2); // JSON string quotes make it exactly the cap
  const decoder = new FrameDecoder();
  const got = new Promise<unknown[]>((resolve, reject) => {
    const out: unknown[] = [];
    receiver.on('data', (chunk: Buffer) => {
      try {
        out.push(...decoder.push(chunk));
        if (out.length) resolve(out);
      } catch (err) {
        reject(err);
      }
    });
  });
  sender.write(encodeFrame(atCap));
  report.checks.frameAtCapArrives = (await got)[0] === atCap;
  const over = Buffer.alloc(4);
  over.writeUInt32BE(MAX_FRAME_BYTES + 1);
  let refused = '';
  try {
    decoder.push(over);
  } catch (err) {
    refused = (err as Error).message;
  }
  report.checks.frameOverCapRefused = /cap is 1048576/.test(refused);
  sender.destroy();
  receiver.destroy();
}

async function main(): Promise<void> {
  report.stage = 'arguments';
  const settings = readSettings();
  report.settings = settings;
  report.addon = vsockAddonPath();

  report.stage = 'available';
  const available = vsockAvailable();
  if (!available.ok) throw new Error(available.reason);
  try {
    report.localCid = localCid();
  } catch (err) {
    report.localCid = err instanceof Error ? err.message : String(err); // informative only
  }

  const watchdog = setTimeout(
    () => fail(new Error(`timed out after ${settings.timeoutMs} ms in stage ${report.stage}`)),
    settings.timeoutMs,
  );
  report.stage = 'listen';
  const server = new VsockServer();
  await server.listen(settings.port);
  const listen = server.address();
  report.listen = listen;

  report.stage = 'connect';
  const acceptedP = nextConnection(server);
  const client = await connectVsock(settings.cid, listen.port, { timeoutMs: 5000 });
  report.stage = 'accept';
  const accepted = await acceptedP;
  await server.close();

  report.stage = 'addresses';
  checkAddresses(settings, listen, client, accepted);

  report.stage = 'transfer';
  await transfer(settings, client, accepted);

  report.stage = 'close';
  await Promise.all([closed(client), closed(accepted)]);

  report.stage = 'frames';
  const again = new VsockServer();
  await again.listen(VMADDR_PORT_ANY);
  const acceptedFrames = nextConnection(again);
  const guestSide = await connectVsock(settings.cid, again.address().port, { timeoutMs: 5000 });
  const hostSide = await acceptedFrames;
  await again.close();
  await frames(settings.cid, guestSide, hostSide);
  clearTimeout(watchdog);

  report.stage = 'done';
  report.ok = Object.values(report.checks).every(Boolean);
  if (!report.ok) {
    const failed = Object.keys(report.checks).filter((k) => !report.checks[k]);
    report.error = { message: `checks failed: ${failed.join(', ')}` };
  }
  finish(report.ok ? 0 : 1);
}

main().catch(fail);
