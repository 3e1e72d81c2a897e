import { lstatSync, realpathSync } from 'node:fs';
import { displayBytes } from '../file-uri.js';
import type { DocumentStore } from './documents.js';

/**
 * Links a VM could have planted. A VM can create files, symbolic links
 * included, only inside the folders it was granted read-write; on the host,
 * the user may later browse such a folder and pick something below a link
 * there, and the grant would reach wherever the link points: a place the
 * user never saw (worse, the VM can swap a real folder for a link between
 * the user's choice and the grant). So a chosen path may pass through a
 * symbolic link only where no VM can write. The user's own links elsewhere
 * (`~/Downloads -> /data/downloads`) are followed as before.
 *
 * Paths are bytes; they are handled here as latin1 strings, which map each
 * byte to one character and back.
 */
const b = (s: string) => Buffer.from(s, 'latin1');
const s = (p: Buffer) => p.toString('latin1');

/** The real paths of every folder some VM may write: its read-write directory documents. */
export async function vmWritableFolders(docs: Pick<DocumentStore, 'list' | 'vmsWithDocuments'>, configured: Iterable<string>): Promise<{ vm: string; path: string }[]> {
  const vms = new Set([...configured, ...docs.vmsWithDocuments()]);
  const out: { vm: string; path: string }[] = [];
  for (const vm of vms) {
    for (const g of await docs.list(vm)) {
      if (!g.writable) continue;
      try {
        if (!lstatSync(g.pathBytes).isDirectory()) continue;
        out.push({ vm, path: s(realpathSync(g.pathBytes, { encoding: 'buffer' })) });
      } catch {
        /* gone from the host: nothing to plant in */
      }
    }
  }
  return out;
}

const inside = (real: string, folder: string) => real === folder || real.startsWith(folder.endsWith('/') ? folder : `${folder}/`);

/**
 * Why `chosen` passes through a link some VM could have planted, or
 * undefined. Walks the path one component at a time from `/`, keeping the
 * real folder it has reached, so a link is judged by the real folder that
 * holds it. A component that does not exist (a file about to be saved) ends
 * the walk. `writableFolders` is asked only when the walk meets a link.
 */
export async function plantedLinkProblem(chosen: Buffer, writableFolders: () => Promise<readonly { vm: string; path: string }[]>): Promise<string | undefined> {
  // Listing every VM's documents costs D-Bus calls: only a path that meets a link needs it.
  let writable: readonly { vm: string; path: string }[] | undefined;
  let real = '/';
  for (const part of s(chosen).split('/').filter(Boolean)) {
    if (part === '.') continue;
    if (part === '..') {
      real = real.slice(0, real.lastIndexOf('/')) || '/';
      continue;
    }
    const next = real === '/' ? `/${part}` : `${real}/${part}`;
    let isLink: boolean;
    try {
      isLink = lstatSync(b(next)).isSymbolicLink();
    } catch {
      return undefined;
    }
    if (!isLink) {
      real = next;
      continue;
    }
    writable ??= await writableFolders();
    const planter = writable.find((w) => inside(real, w.path));
    if (planter) {
      return `${displayBytes(b(next))} is a symbolic link inside a folder VM "${planter.vm}" can write; a grant through it could reach a file the user never saw`;
    }
    try {
      real = s(realpathSync(b(next), { encoding: 'buffer' }));
    } catch {
      return undefined;
    }
  }
  return undefined;
}
