import net from 'node:net';
import { readFileSync } from 'node:fs';
import { childLogger } from '../src/log.js';
import { Connection } from '../src/protocol/connection.js';
import { methodTable } from '../src/protocol/methods.js';
import { Ping, SESSION_METHODS } from '../src/protocol/session.js';
import { BENCH_CONFIG } from './stats.js';
import { World } from '../src/testbed/world.js';

/**
 * The host daemon with many VMs connected at once: its resident memory, and
 * how many protocol requests each VM gets answered per second, all VMs
 * loading it together, with every answer checked.
 */
export interface Scale {
  vms: number;
  rssIdleMiB: number;
  rssConnectedMiB: number;
  rssAfterLoadMiB: number;
  requestsPerVm: number;
  perVmRate: { min: number; median: number };
  totalRate: number;
  lost: number;
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function simulatedGuest(endpoint: string): Promise<Connection> {
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect(endpoint);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
  const conn = new Connection({ role: 'guest', stream: socket, methods: methodTable(SESSION_METHODS), log: childLogger({ bench: 'scale' }) });
  await conn.helloAsGuest({ name: 'bench', version: '0' });
  return conn;
}

/** `total` pings with `window` in flight; returns requests per second and how many came back wrong. */
async function load(conn: Connection, total: number, window: number): Promise<{ rate: number; lost: number }> {
  let next = 0;
  let lost = 0;
  const t0 = process.hrtime.bigint();
  const worker = async () => {
    while (next < total) {
      const seq = next++;
      const r = await conn.request(Ping, { seq }).catch(() => undefined);
      if (r?.seq !== seq) lost++;
    }
  };
  await Promise.all(Array.from({ length: window }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { rate: total / seconds, lost };
}

export async function benchScale(vmCount: number, requestsPerVm: number): Promise<Scale> {
  const names = Array.from({ length: vmCount }, (_, i) => `vm${i}`);
  const world = await World.start(names.map((name) => ({ name })), { shares: false, guests: false, config: BENCH_CONFIG });
  try {
    const pid = world.daemon!.pid!;
    await new Promise((r) => setTimeout(r, 500));
    const rssIdleMiB = rssMiB(pid);
    const conns = await Promise.all(names.map((n) => simulatedGuest(world.endpointOf(n))));
    await new Promise((r) => setTimeout(r, 500));
    const rssConnectedMiB = rssMiB(pid);
    const t0 = process.hrtime.bigint();
    const per = await Promise.all(conns.map((c) => load(c, requestsPerVm, 8)));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const rssAfterLoadMiB = rssMiB(pid);
    for (const c of conns) c.close('bench done');
    const rates = per.map((p) => p.rate).sort((a, b) => a - b);
    return {
      vms: vmCount,
      rssIdleMiB,
      rssConnectedMiB,
      rssAfterLoadMiB,
      requestsPerVm,
      perVmRate: { min: rates[0]!, median: rates[Math.floor(rates.length / 2)]! },
      totalRate: (vmCount * requestsPerVm) / seconds,
      lost: per.reduce((a, p) => a + p.lost, 0),
    };
  } finally {
    await world.stop();
  }
}

/** One VM alone: the per-VM ceiling when nothing else competes. */
export async function benchSingleVmRate(requests: number): Promise<number> {
  const world = await World.start([{ name: 'solo' }], { shares: false, guests: false, config: BENCH_CONFIG });
  try {
    const conn = await simulatedGuest(world.endpointOf('solo'));
    const { rate, lost } = await load(conn, requests, 8);
    conn.close('bench done');
    if (lost) throw new Error(`${lost} requests lost`);
    return rate;
  } finally {
    await world.stop();
  }
}
