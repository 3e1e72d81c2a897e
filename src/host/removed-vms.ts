import { readFileSync, readlinkSync, readdirSync } from 'node:fs';
import type { Logger } from '../log.js';
import { appIdOf, type DocumentStore } from './documents.js';
import { virtiofsdProcesses } from './virtiofsd.js';

/**
 * VMs that were removed from the config but left something behind: documents
 * in the store (which `xdp-vm grants` must still list and revoke) and maybe a
 * virtiofsd still exporting their view. The daemon does not serve a removed
 * VM: it has no endpoint for it, and its virtiofsd is stopped as soon as no
 * VM is connected to it. A virtiofsd that still has its VMM connected is left
 * alone, because pulling it from under a mounted share hangs the guest (see
 * virtiofsd.ts); it exits by itself when that VM lets go.
 */
export const DEFAULT_GUEST_MOUNT = '/run/xdp-vm/doc';

/** Names of VMs with documents in the store that the config no longer has. */
export function removedVmsWithDocuments(docs: Pick<DocumentStore, 'vmsWithDocuments'>, configured: ReadonlySet<string>): string[] {
  return docs.vmsWithDocuments().filter((vm) => !configured.has(vm));
}

export interface LeftoverVirtiofsd {
  vm: string;
  pid: number;
  /** Its vhost-user socket, where a VMM connects. */
  socket: string;
}

/** Every virtiofsd exporting the view of a VM that is not configured. */
export function leftoverVirtiofsds(docs: Pick<DocumentStore, 'mountPoint'>, configured: ReadonlySet<string>): LeftoverVirtiofsd[] {
  const prefix = `source=${docs.mountPoint}/by-app/${appIdOf('')}`;
  const out: LeftoverVirtiofsd[] = [];
  for (const p of virtiofsdProcesses()) {
    const source = p.argv.find((a) => a.startsWith(prefix));
    const vm = source?.slice(prefix.length).replace(/\/+$/, '');
    const socket = p.argv.find((a) => a.startsWith('--socket-path='))?.slice('--socket-path='.length) ?? '';
    if (vm && !vm.includes('/') && !configured.has(vm)) out.push({ vm, pid: p.pid, socket });
  }
  return out;
}

/**
 * Whether a VMM is connected to this virtiofsd: it holds a connected Unix
 * socket accepted on its vhost-user socket path (an accepted socket carries
 * the listener's path). virtiofsd makes its sockets before its sandbox
 * gives it a network namespace of its own, so they are listed in ours; its
 * own namespace's table is read too, in case a build does it the other way.
 */
export function hasVmmConnected(pid: number, socketPath: string): boolean {
  let table: string;
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    }
    table = readFileSync('/proc/self/net/unix', 'utf8') + readFileSync(`/proc/${pid}/net/unix`, 'utf8');
  } catch {
    // Gone, or not ours to read: assume it is serving, the safe side.
    return true;
  }
  const SS_CONNECTED = '03';
  return table
    .split('\n')
    .slice(1)
    .some((line) => {
      const cols = line.trim().split(/\s+/);
      return cols[5] === SS_CONNECTED && inodes.has(cols[6] ?? '') && cols.slice(7).join(' ') === socketPath;
    });
}

/**
 * Stop the idle virtiofsd of each removed VM; leave, and say so, one that
 * still serves a running VM. virtiofsd's sandbox forks, and its parent and
 * child go together, so a VM's processes are judged as one.
 */
export function retireLeftoverVirtiofsds(docs: Pick<DocumentStore, 'mountPoint'>, configured: ReadonlySet<string>, log: Logger): LeftoverVirtiofsd[] {
  const left = leftoverVirtiofsds(docs, configured);
  const byVm = new Map<string, LeftoverVirtiofsd[]>();
  for (const l of left) byVm.set(l.vm, [...(byVm.get(l.vm) ?? []), l]);
  for (const [vm, procs] of byVm) {
    const pids = procs.map((p) => p.pid);
    if (procs.some((p) => hasVmmConnected(p.pid, p.socket))) {
      log.warn({ vm, pids }, `VM "${vm}" is no longer configured, but its virtiofsd still serves a running VM; it stops by itself when that VM shuts down`);
      continue;
    }
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
    }
    log.info({ vm, pids }, `VM "${vm}" is no longer configured: stopped its idle virtiofsd`);
  }
  return left;
}
