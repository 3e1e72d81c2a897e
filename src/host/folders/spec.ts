import path from 'node:path';
import { z } from 'zod';
import { VmName } from '../../config/schema.js';

/**
 * A folder share: one host folder given to one VM as its own virtio-fs
 * device, served by its own virtiofsd, mounted in the guest at
 * /run/xdp-vm/shares/<name>. What a share is, its names, and which folders
 * a VM must never get. The store (store.ts) keeps them; VmFolders plugs
 * them in.
 */
export const MAX_FOLDER_SHARES = 64;
export const GUEST_SHARES_DIR = '/run/xdp-vm/shares';
const TAG_PREFIX = 'xdpvm-f-';

/** A share's name: one path component in the guest, and part of a virtiofs tag (36 bytes at most). */
export const FolderName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,23}$/, 'a share name is 1-24 lowercase letters, digits, ".", "_" or "-", starting with a letter or digit')
  .refine((n) => n !== '.' && n !== '..', 'a share name is not "." or ".."');
export type FolderName = z.infer<typeof FolderName>;

export const FolderShare = z.strictObject({
  vm: VmName,
  name: FolderName,
  /** The folder's real path on the host (symlinks resolved when it was added). */
  path: z.string().min(1).max(4000).refine((p) => path.isAbsolute(p) && path.normalize(p) === p, 'must be an absolute, normalised path'),
  readOnly: z.boolean(),
});
export type FolderShare = z.infer<typeof FolderShare>;

/** The virtiofs tag the guest mounts, also the share's id for the VMM (its device and chardev ids derive from it). */
export function folderTag(name: FolderName): string {
  return `${TAG_PREFIX}${name}`;
}

/** The share's name back from a tag of ours; undefined for any other tag. */
export function folderNameOfTag(tag: string): FolderName | undefined {
  if (!tag.startsWith(TAG_PREFIX)) return undefined;
  const parsed = FolderName.safeParse(tag.slice(TAG_PREFIX.length));
  return parsed.success ? parsed.data : undefined;
}

export function guestPathOfFolder(name: FolderName): string {
  return `${GUEST_SHARES_DIR}/${name}`;
}

/** A name from the folder's own: "Photos 2026" → "photos-2026". */
export function defaultFolderName(folder: string): string {
  const base = path
    .basename(folder)
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[._-]+|[-]+$/g, '')
    .slice(0, 24)
    .replace(/[._-]+$/, '');
  return FolderName.safeParse(base).success ? base : 'folder';
}

/** What the refusals are checked against: the host's own places and every VM's shares. */
export interface FolderContext {
  home: string;
  /** The document store's FUSE mount, which holds every VM's documents. */
  documentStore: string;
  /** Every share of every VM. */
  shares: readonly FolderShare[];
}

function inside(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent === '/' ? '/' : `${parent}/`);
}

/** Places that are not folders of the user's: the kernel's and the system's (removable media under /run/media are the user's). */
const SYSTEM = ['/proc', '/sys', '/dev', '/run', '/boot', '/etc', '/usr'];
const USERS_UNDER_SYSTEM = ['/run/media'];

/**
 * Why `folder` (a real path: symlinks resolved) must not go to `vm`, or
 * undefined when it may. Each reason is a sentence the CLI shows as it is.
 */
export function folderRefusal(vm: string, name: string, folder: string, opts: { readOnly: boolean; force: boolean }, ctx: FolderContext): string | undefined {
  if (folder === '/') return 'refused: "/" is the whole host file system; share a folder inside it';
  const system = SYSTEM.find((sys) => inside(folder, sys) && !USERS_UNDER_SYSTEM.some((u) => inside(folder, u)));
  if (system) return `refused: ${folder} is under ${system}, a system folder, not one of your own; share a folder of yours`;
  // An unprivileged virtiofsd's namespace puts a folder of the user's over /var (src/host/virtiofsd.ts).
  if (inside(folder, '/var')) return `refused: ${folder} is under /var, which the unprivileged virtiofsd cannot serve (its namespace replaces /var); share a folder elsewhere`;
  if (inside(ctx.documentStore, folder) || inside(folder, ctx.documentStore))
    return `refused: ${folder} ${folder === ctx.documentStore ? 'is' : inside(folder, ctx.documentStore) ? 'is inside' : 'holds'} the document store's own mount (${ctx.documentStore}), which holds every VM's documents; files go to a VM one by one through the file chooser`;
  if (!opts.force && inside(ctx.home, folder))
    return `refused: ${folder} ${folder === ctx.home ? 'is your whole home folder' : `holds your whole home folder (${ctx.home})`}, with every key, token and setting in it; share a folder inside it, or add --force if you mean it`;
  for (const s of ctx.shares) {
    if (s.vm === vm && s.name === name) return `VM "${vm}" already has a share named "${name}" (${s.path}); remove it first, or pick another --name`;
    if (s.vm === vm && s.path === folder) return `VM "${vm}" already has ${folder}, as share "${s.name}"`;
    if (s.vm !== vm && (inside(folder, s.path) || inside(s.path, folder)))
      return `refused: ${folder} overlaps VM "${s.vm}"'s share "${s.name}" (${s.path}); a folder goes to one VM only, so one VM cannot reach into another's`;
  }
  if (ctx.shares.filter((s) => s.vm === vm).length >= MAX_FOLDER_SHARES) return `VM "${vm}" has ${MAX_FOLDER_SHARES} folder shares, the most it may have; remove one first`;
  return undefined;
}
