import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Bus } from '../src/dbus/bus.js';
import { requireProgram } from '../src/deps.js';
import { runProgram } from '../src/exec.js';
import { DocumentStore } from '../src/host/documents.js';
import { now } from '../src/trace.js';
import { startPrivateBus, type PrivateBus } from '../src/testbed/private-bus.js';
import { summarize } from './stats.js';

/**
 * The per-VM view of the document store, two ways, measured side by side:
 *   by-app:   the user's one document store; each VM is an app id and its
 *             share exports <doc>/by-app/<app id> (what we ship);
 *   instance: one document store per VM (Spectrum's way): its own bus,
 *             xdg-document-portal and xdg-permission-store per VM.
 */
export interface DocViewResult {
  variant: 'by-app' | 'instance';
  extraProcessesPerVm: number;
  extraRssMiBPerVm: number;
  startMs: number;
  grantToVisible: { p50: number; p99: number };
  readMiBps: number;
}

function rssMiB(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
  } catch {
    return 0;
  }
}

async function store(dir: string): Promise<{ bus: PrivateBus; client: Bus; docs: DocumentStore; startMs: number }> {
  const env: Record<string, string> = { HOME: dir, XDG_RUNTIME_DIR: path.join(dir, 'run'), XDG_DATA_HOME: path.join(dir, 'data'), PATH: process.env.PATH ?? '/usr/bin' };
  mkdirSync(env.XDG_RUNTIME_DIR!, { recursive: true, mode: 0o700 });
  const t0 = now();
  const bus = await startPrivateBus({
    dir,
    env,
    services: [
      { name: 'org.freedesktop.portal.Documents', exec: requireProgram('xdg-document-portal') },
      { name: 'org.freedesktop.impl.portal.PermissionStore', exec: requireProgram('xdg-permission-store') },
    ],
  });
  const client = await Bus.connect(bus.address, { unixFds: true });
  const docs = await DocumentStore.open(client);
  return { bus, client, docs, startMs: now() - t0 };
}

async function pidsOn(client: Bus): Promise<number[]> {
  const pids: number[] = [];
  for (const name of ['org.freedesktop.portal.Documents', 'org.freedesktop.impl.portal.PermissionStore']) {
    const [pid] = await client.call({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'GetConnectionUnixProcessID', signature: 's', body: [name] });
    pids.push(pid as number);
  }
  return pids;
}

async function measure(docs: DocumentStore, viewOf: (vm: string) => string, files: string, grants: number) {
  const samples: number[] = [];
  for (let i = 0; i < grants; i++) {
    const f = path.join(files, `g${i}.txt`);
    writeFileSync(f, 'x');
    const t0 = now();
    const g = await docs.grant('work', f, { write: false });
    readFileSync(path.join(viewOf('work'), g.id, g.name));
    samples.push(now() - t0);
  }
  const big = path.join(files, 'big.bin');
  writeFileSync(big, Buffer.alloc(64 * 1024 * 1024, 7));
  const g = await docs.grant('work', big, { write: false });
  const t0 = now();
  const bytes = readFileSync(path.join(viewOf('work'), g.id, g.name)).length;
  const readMiBps = bytes / (1024 * 1024) / ((now() - t0) / 1000);
  const s = summarize(samples);
  return { grantToVisible: { p50: s.p50, p99: s.p99 }, readMiBps };
}

export async function benchDocView(grants: number): Promise<DocViewResult[]> {
  const root = mkdtempSync(path.join(tmpdir(), 'xdp-vm-docview-'));
  const files = path.join(root, 'files');
  mkdirSync(files);
  const out: DocViewResult[] = [];
  const stores: { bus: PrivateBus; client: Bus; mount: string }[] = [];
  try {
    // by-app: one store, the VM is an app id. Its marginal cost per VM is nothing running.
    const shared = await store(path.join(root, 'shared'));
    stores.push({ ...shared, mount: shared.docs.mountPoint });
    out.push({ variant: 'by-app', extraProcessesPerVm: 0, extraRssMiBPerVm: 0, startMs: 0, ...(await measure(shared.docs, (vm) => shared.docs.viewOf(vm), files, grants)) });
    // instance: a whole store for this VM; everything it runs is per-VM cost.
    const own = await store(path.join(root, 'vm-work'));
    stores.push({ ...own, mount: own.docs.mountPoint });
    const pids = await pidsOn(own.client);
    const rss = [...pids, own.bus.pid ?? 0].reduce((a, p) => a + rssMiB(p), 0);
    out.push({ variant: 'instance', extraProcessesPerVm: 3, extraRssMiBPerVm: rss, startMs: own.startMs, ...(await measure(own.docs, () => own.docs.mountPoint, files, grants)) });
  } finally {
    for (const s of stores) {
      s.client.close();
      await s.bus.stop();
      await runProgram(requireProgram('fusermount3'), ['-u', '-z', s.mount]).catch(() => undefined);
    }
    rmSync(root, { recursive: true, force: true });
  }
  return out;
}
