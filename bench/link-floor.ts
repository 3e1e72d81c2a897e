import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { ALL_METHODS } from '../portals/index.js';
import { OpenDialog } from '../portals/file-chooser/schema.js';
import { closeOnExecFrom } from '../src/native/addon.js';
import { NODE_FLAGS, packageRoot } from '../src/paths.js';
import { Connection } from '../src/protocol/connection.js';
import { methodTable, type MethodTable } from '../src/protocol/methods.js';
import { summarize, timeEach, type Summary } from './stats.js';
import { z } from 'zod';

/**
 * What one link hop costs with nothing else around it: a fileChooser.open
 * request and its answer between two Node processes over a Unix socket (the
 * hybrid-vsock endpoint the bench's guests use), once as bare length-framed
 * JSON and once through src/protocol/connection.ts on both ends (framing,
 * zod checks of every frame, params and result, request ids, corking). Half
 * a round trip is one hop; the bare one is the floor any link between two
 * event loops pays on this machine, the difference is our protocol layer.
 */
export interface LinkFloor {
  raw: Summary;
  ours: Summary;
  /** Ours with fileChooser.open's params and result schemas made z.unknown() on both ends (frames still checked). */
  unchecked: Summary;
}

/** The real table with fileChooser.open's params and result schemas replaced by z.unknown(): what those two checks cost. */
export function uncheckedMethods(): MethodTable {
  return methodTable(ALL_METHODS.map((m) => (m.name === OpenDialog.name ? { ...OpenDialog, params: z.unknown(), result: z.unknown() } : m)));
}

const PARAMS = { kind: 'open' as const, title: 'Bench', appId: '', options: { accept_label: '_Open', modal: true } };

async function peer(socket: string, mode: 'raw' | 'ours' | 'unchecked'): Promise<{ stop: () => void }> {
  closeOnExecFrom(3);
  const child = spawn(process.execPath, [...NODE_FLAGS, path.join(packageRoot(), 'dist', 'bench', 'link-peer.js'), socket, mode], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`link peer exited (${code})`)));
  });
  return { stop: () => child.stdin.end() };
}

function connect(socket: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket, () => resolve(s));
    s.once('error', reject);
  });
}

/** `idleMs`: how long both ends sleep between calls, as they do between a real app's calls (caches and CPUs go cold). */
export async function benchLinkFloor(n: number, idleMs = 0): Promise<LinkFloor> {
  const dir = mkdtempSync(path.join(tmpdir(), 'xdp-vm-link-'));
  const peers: { stop: () => void }[] = [];
  const sockets: net.Socket[] = [];
  try {
    const rawSock = path.join(dir, 'raw.sock');
    const oursSock = path.join(dir, 'ours.sock');
    const uncheckedSock = path.join(dir, 'unchecked.sock');
    peers.push(await peer(rawSock, 'raw'), await peer(oursSock, 'ours'), await peer(uncheckedSock, 'unchecked'));

    const raw = await connect(rawSock);
    sockets.push(raw);
    let pendingRaw: (() => void) | undefined;
    let buf: Buffer = Buffer.alloc(0);
    raw.on('data', (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const len = buf.readUInt32BE(0);
        JSON.parse(buf.subarray(4, 4 + len).toString('utf8'));
        buf = buf.subarray(4 + len);
        pendingRaw?.();
      }
    });
    let id = 0;
    const idle = () => (idleMs > 0 ? new Promise((r) => setTimeout(r, idleMs)) : undefined);
    const rawCall = () =>
      new Promise<void>((resolve) => {
        pendingRaw = resolve;
        const json = JSON.stringify({ t: 'req', id: ++id, method: OpenDialog.name, params: PARAMS });
        const out = Buffer.allocUnsafe(4 + Buffer.byteLength(json));
        out.writeUInt32BE(out.length - 4, 0);
        out.write(json, 4);
        raw.write(out);
      });

    const linkTo = async (socket: string, methods: MethodTable) => {
      const stream = await connect(socket);
      sockets.push(stream);
      const conn = new Connection({ role: 'guest', stream, methods, log: pino({ level: 'warn' }, pino.destination(2)) });
      await conn.helloAsGuest({ name: 'bench', version: '0' });
      return conn;
    };
    const conn = await linkTo(oursSock, methodTable(ALL_METHODS));
    const oursCall = async () => {
      await conn.request(OpenDialog, PARAMS);
    };
    const uncheckedConn = await linkTo(uncheckedSock, uncheckedMethods());
    const unchecked = uncheckedMethods().get(OpenDialog.name)!;
    const uncheckedCall = async () => {
      await uncheckedConn.request(unchecked, PARAMS);
    };

    const samples = { raw: [] as number[], ours: [] as number[], unchecked: [] as number[] };
    const block = 200;
    for (let done = 0; done < n; done += block) {
      const k = Math.min(block, n - done);
      samples.raw.push(...(await timeEach(k, rawCall, done === 0 ? 200 : 0, idle)));
      samples.ours.push(...(await timeEach(k, oursCall, done === 0 ? 200 : 0, idle)));
      samples.unchecked.push(...(await timeEach(k, uncheckedCall, done === 0 ? 200 : 0, idle)));
    }
    conn.close();
    uncheckedConn.close();
    return { raw: summarize(samples.raw), ours: summarize(samples.ours), unchecked: summarize(samples.unchecked) };
  } finally {
    for (const s of sockets) s.destroy();
    for (const p of peers) p.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
