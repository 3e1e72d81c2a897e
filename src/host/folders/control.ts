import { accessSync, constants, realpathSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { PortalError } from '../../dbus/bus.js';
import { audit } from '../audit.js';
import type { VmSession } from '../vm-session.js';
import { defaultFolderName, FolderName, folderRefusal, guestPathOfFolder, type FolderShare } from './spec.js';
import type { FolderStore } from './store.js';

/**
 * The folder-share methods of io.github.xdp_vm.Host1, for the CLI, file
 * managers and VM managers: add, list, remove. Every refusal is a sentence
 * the caller can show as it is; every change is one audit line.
 */
const PORTAL = 'FolderShare';

export interface FolderControlDeps {
  sessions: ReadonlyMap<string, VmSession>;
  store: FolderStore;
  /** The document store's mount, which no folder share may reach. */
  documentStore: string;
}

function sessionOf(deps: FolderControlDeps, vm: string): VmSession {
  const s = deps.sessions.get(vm);
  if (!s) throw new PortalError('NotFound', `no VM named "${vm}"; configured: ${[...deps.sessions.keys()].join(', ') || 'none'}`);
  return s;
}

/** The folder as the host has it: real (symlinks resolved), a folder, readable by the user. */
function realFolder(p: string): string {
  if (!p.startsWith('/')) throw new PortalError('InvalidArgument', `"${p}" is not an absolute path`);
  let real: string;
  try {
    real = realpathSync(p);
  } catch (err) {
    throw new PortalError('NotFound', `there is no folder ${p} on the host (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (!statSync(real).isDirectory()) throw new PortalError('InvalidArgument', `${p} is not a folder; a file goes to a VM through the file chooser`);
  try {
    accessSync(real, constants.R_OK | constants.X_OK);
  } catch {
    throw new PortalError('NotAllowed', `you cannot read ${real} yourself, so no VM can be given it`);
  }
  return real;
}

export function folderControl(deps: FolderControlDeps) {
  return {
    AddShare: async ([vm, folder, name, readOnly, force]: unknown[]) => {
      const s = sessionOf(deps, vm as string);
      if (!s.folders) throw new PortalError('Failed', 'this daemon serves no shares (it was started without them)');
      if (s.folders.unable) throw new PortalError('NotAllowed', s.folders.unable);
      const real = realFolder(folder as string);
      const chosen = (name as string) || defaultFolderName(real);
      const parsed = FolderName.safeParse(chosen);
      if (!parsed.success) throw new PortalError('InvalidArgument', `"${chosen}" is not a share name: ${parsed.error.issues[0]!.message}`);
      if (deps.store.problem) throw new PortalError('Failed', `folder shares cannot change: ${deps.store.problem}`);
      const refusal = folderRefusal(s.vm.name, parsed.data, real, { readOnly: !!readOnly, force: !!force }, { home: homedir(), documentStore: deps.documentStore, shares: deps.store.all() });
      const request = `share add ${parsed.data}`;
      if (refusal) {
        audit({ vm: s.vm.name, portal: PORTAL, request, decision: 'deny', reason: 'cli', grant: null, asked: { path: real, readOnly: !!readOnly, why: refusal } });
        throw new PortalError(refusal.startsWith('refused') ? 'NotAllowed' : 'Exists', refusal);
      }
      const share: FolderShare = { vm: s.vm.name, name: parsed.data, path: real, readOnly: !!readOnly };
      const status = await s.folders.add(share, { strict: true }).catch((err: Error) => {
        audit({ vm: s.vm.name, portal: PORTAL, request, decision: 'error', reason: 'failure', grant: null, asked: { path: real, readOnly: share.readOnly, why: err.message } });
        throw new PortalError('Failed', err.message);
      });
      try {
        deps.store.add(share);
      } catch (err) {
        await s.folders.remove(share.name);
        throw new PortalError('Failed', `could not remember the share, so it was taken back: ${(err as Error).message}`);
      }
      audit({ vm: s.vm.name, portal: PORTAL, request, decision: 'allow', reason: 'cli', grant: [share.name], asked: { path: real, readOnly: share.readOnly, guestPath: status.guestPath, ...(force ? { forced: true } : {}) } });
      return [share.name, status.guestPath];
    },

    ListShares: ([vm]: unknown[]) => {
      const names = vm ? [sessionOf(deps, vm as string).vm.name] : [...deps.sessions.keys()];
      const rows: [string, string, string, boolean, string, string, string][] = [];
      for (const n of names) {
        const running = new Map((deps.sessions.get(n)?.folders?.list() ?? []).map((f) => [f.share.name, f]));
        for (const f of deps.store.of(n)) {
          const r = running.get(f.name);
          rows.push([f.vm, f.name, f.path, f.readOnly, guestPathOfFolder(f.name), r?.state ?? 'stopped', r?.detail ?? '']);
        }
      }
      return [rows];
    },

    RemoveShare: async ([vm, name]: unknown[]) => {
      const s = sessionOf(deps, vm as string);
      const share = deps.store.of(s.vm.name).find((f) => f.name === name);
      if (!share) throw new PortalError('NotFound', `VM "${s.vm.name}" has no folder share "${String(name).slice(0, 40)}"; see xdp-vm share list ${s.vm.name}`);
      await s.folders?.remove(share.name);
      deps.store.remove(share.vm, share.name);
      audit({ vm: s.vm.name, portal: PORTAL, request: `share remove ${share.name}`, decision: 'revoke', reason: 'cli', grant: [share.name], asked: { path: share.path } });
      return [];
    },
  };
}
