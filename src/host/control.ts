import type { Bus } from '../dbus/bus.js';
import { PortalError, variant } from '../dbus/bus.js';
import { loadInterface } from '../dbus/interfaces.js';
import { audit } from './audit.js';
import type { DocumentStore, Grant } from './documents.js';
import type { VmSession } from './vm-session.js';
import { DEFAULT_GUEST_MOUNT, removedVmsWithDocuments } from './removed-vms.js';
import { guestLogText } from '../guest-input.js';
import { guestPathOf } from '../../portals/file-chooser/paths.js';
import { FILE_CHOOSER } from '../../portals/file-chooser/index.js';
import { folderControl } from './folders/control.js';
import type { FolderStore } from './folders/store.js';
import { networkControl } from '../../portals/network/control.js';
import { usbControl } from '../../portals/usb/control.js';
import type { HostUsb } from '../../portals/usb/host-usb.js';

/** io.github.xdp_vm.Host1: what the CLI asks the running daemon. */
export const CONTROL_BUS_NAME = 'io.github.xdp_vm.Host';
export const CONTROL_PATH = '/io/github/xdp_vm/Host';
export const CONTROL_INTERFACE = 'io.github.xdp_vm.Host1';
/** 2: folder shares (AddShare, ListShares, RemoveShare). 3: networks (ListNetworks, AttachNetwork, DetachNetwork). 4: USB (ListUsbDevices, AttachUsb, DetachUsb). */
export const CONTROL_VERSION = 4;

export function grantRow(g: Grant, guestMount: string): [string, string, Buffer, string, boolean] {
  return [g.vm, g.id, Buffer.concat([g.pathBytes, Buffer.from([0])]), guestPathOf(g, guestMount), g.writable];
}

/** Revoke every grant of a VM, with one audit line. */
export async function revokeAll(docs: DocumentStore, vm: string): Promise<string[]> {
  const ids: string[] = [];
  for (const g of await docs.list(vm)) if (await docs.revoke(vm, g.id)) ids.push(g.id);
  audit({ vm, portal: FILE_CHOOSER.name, request: 'grants revoke --all', decision: 'revoke', reason: 'cli', grant: ids });
  return ids;
}

/**
 * A VM the CLI names: a configured one, or one removed from the config that
 * still has documents, so its grants can be listed and taken back.
 */
interface NamedVm {
  name: string;
  guestMount: string;
  session: VmSession | undefined;
}

export function exportControl(bus: Bus, sessions: ReadonlyMap<string, VmSession>, docs: DocumentStore, folders: FolderStore, usb?: HostUsb): () => void {
  const configured = () => new Set(sessions.keys());
  const removed = (): NamedVm[] => removedVmsWithDocuments(docs, configured()).map((name) => ({ name, guestMount: DEFAULT_GUEST_MOUNT, session: undefined }));
  const named = (name: string): NamedVm => {
    const s = sessions.get(name);
    if (s) return { name, guestMount: s.vm.share.guestMount, session: s };
    const gone = removed().find((r) => r.name === name);
    if (gone) return gone;
    throw new PortalError('NotFound', `no VM named "${name}"; configured: ${[...sessions.keys()].join(', ') || 'none'}`);
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
            portals: variant('as', [...s.portals]),
            vmm: variant('s', s.vm.vmm.type),
            vmm_detail: variant('s', s.devices?.detail ?? ''),
            capabilities: variant('as', s.devices?.capabilities()?.has ?? []),
            lacks: variant('a{ss}', s.devices?.capabilities()?.lacks ?? {}),
          },
        ]),
      ],
      ListGrants: async ([vm]) => {
        const targets: NamedVm[] = vm ? [named(vm as string)] : [...[...sessions.values()].map((s) => named(s.vm.name)), ...removed()];
        const rows = [];
        for (const t of targets) for (const g of await docs.list(t.name)) rows.push(grantRow(g, t.guestMount));
        return [rows];
      },
      RevokeAll: async ([vm]) => {
        const t = named(vm as string);
        const ids = await revokeAll(docs, t.name);
        await t.session?.share?.detach();
        return [ids.length];
      },
      Revoke: async ([vm, id]) => {
        const t = named(vm as string);
        if (!(await docs.revoke(t.name, id as string))) throw new PortalError('NotFound', `VM "${t.name}" has no grant "${guestLogText(id, 64)}"`);
        audit({ vm: t.name, portal: FILE_CHOOSER.name, request: 'grants revoke', decision: 'revoke', reason: 'cli', grant: [id as string] });
        return [];
      },
      ...folderControl({ sessions, store: folders, documentStore: docs.mountPoint }),
      ...networkControl(sessions),
      ...usbControl(usb),
    },
    { version: () => variant('u', CONTROL_VERSION) },
  );
}
