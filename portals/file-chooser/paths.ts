import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Grant } from '../../src/host/documents.js';

/**
 * Guest paths and host paths. A guest path means something on the host only
 * when it points into the VM's own share, at a document the VM was granted;
 * anything else is dropped, so a guest cannot steer the host dialog to an
 * arbitrary host folder by naming it.
 */
export interface GrantLookup {
  lookup(vm: string, id: string): Promise<Grant | undefined>;
}

export async function guestPathToHost(guestPath: string, vm: string, guestMount: string, docs: GrantLookup): Promise<string | undefined> {
  if (!path.posix.isAbsolute(guestPath) || guestPath.includes('\0')) return undefined;
  const p = path.posix.normalize(guestPath);
  const mount = path.posix.normalize(guestMount).replace(/\/+$/, '');
  if (!p.startsWith(`${mount}/`)) return undefined;
  const [id, name, ...rest] = p.slice(mount.length + 1).split('/').filter(Boolean);
  if (!id) return undefined;
  const grant = await docs.lookup(vm, id);
  if (!grant) return undefined;
  if (name === undefined) return path.dirname(grant.hostPath);
  if (name !== grant.name) return undefined;
  return rest.length ? path.join(grant.hostPath, ...rest) : grant.hostPath;
}

export function guestUriOf(grant: Grant, guestMount: string): string {
  return pathToFileURL(path.posix.join(guestMount, grant.id, grant.name)).href;
}

/** The local path of a file:// URI from the host dialog, or undefined for anything else. */
export function hostPathOfUri(uri: string): string | undefined {
  if (!uri.startsWith('file://')) return undefined;
  try {
    const p = fileURLToPath(uri);
    return path.isAbsolute(p) ? p : undefined;
  } catch {
    return undefined;
  }
}
