import type { Bus } from '../dbus/bus.js';
import { PortalError, variant } from '../dbus/bus.js';
import { loadInterface } from '../dbus/interfaces.js';
import { stringToBytes } from '../dbus/values.js';
import { audit } from './audit.js';
import type { DocumentStore, Grant } from './documents.js';
import type { VmSession } from './vm-session.js';
import { guestUriOf } from '../../portals/file-chooser/paths.js';
import { fileURLToPath } from 'node:url';

/** io.github.xdp_vm.Host1: what the CLI asks the running daemon. */
export const CONTROL_BUS_NAME = 'io.github.xdp_vm.Host';
export const CONTROL_PATH = '/io/github/xdp_vm/Host';
export const CONTROL_INTERFACE = 'io.github.xdp_vm.Host1';
export const CONTROL_VERSION = 1;

export function grantRow(g: Grant, guestMount: string): [string, string, Buffer, string, boolean] {
  return [g.vm, g.id, stringToBytes(g.hostPath), fileURLToPath(guestUriOf(g, guestMount)), g.writable];
}

/** Revoke every grant of a VM, with one audit line. */
export async function revokeAll(docs: DocumentStore, vm: string): Promise<string[]> {
  const ids: string[] = [];
  for (const g of await docs.list(vm)) if (await docs.revoke(vm, g.id)) ids.push(g.id);
  audit({ vm, portal: 'FileChooser', request: 'grants revoke --all', decision: 'revoke', reason: 'cli', grant: ids });
  return ids;
}

export function exportControl(bus: Bus, sessions: ReadonlyMap<string, VmSession>, docs: DocumentStore): () => void {
  const session = (name: string) => {
    const s = sessions.get(name);
    if (!s) throw new PortalError('NotFound', `no VM named "${name}"; configured: ${[...sessions.keys()].join(', ') || 'none'}`);
    return s;
  };
  return bus.export(
    CONTROL_PATH,
    loadInterface(CONTROL_INTERFACE),
    {
      ListVms: () => [
        [...sessions.values()].map((s) => [
          s.vm.name,
          {
            label: variant('s', s.vm.label),
            color: variant('s', s.vm.color),
            tags: variant('as', s.vm.tags),
            transport: variant('s', s.vm.transport.type),
            connected: variant('b', s.connected),
            share: variant('s', s.share?.state ?? 'stopped'),
            share_detail: variant('s', s.share?.detail ?? ''),
          },
        ]),
      ],
      ListGrants: async ([vm]) => {
        const targets = vm ? [session(vm as string)] : [...sessions.values()];
        const rows = [];
        for (const s of targets) for (const g of await docs.list(s.vm.name)) rows.push(grantRow(g, s.vm.share.guestMount));
        return [rows];
      },
      RevokeAll: async ([vm]) => {
        const s = session(vm as string);
        const ids = await revokeAll(docs, s.vm.name);
        await s.share?.detach();
        return [ids.length];
      },
      Revoke: async ([vm, id]) => {
        const s = session(vm as string);
        if (!(await docs.revoke(s.vm.name, id as string))) throw new PortalError('NotFound', `VM "${vm}" has no grant "${id}"`);
        audit({ vm: s.vm.name, portal: 'FileChooser', request: 'grants revoke', decision: 'revoke', reason: 'cli', grant: [id as string] });
        return [];
      },
    },
    { version: () => variant('u', CONTROL_VERSION) },
  );
}
