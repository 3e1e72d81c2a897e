import path from 'node:path';
import type { Grant } from '../../src/host/documents.js';
import { bytesOfFileUri, fileUriOfBytes, utf8OrUndefined } from '../../src/file-uri.js';
import { isDocumentId, normaliseGuestPath } from '../../src/guest-input.js';

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
  const p = normaliseGuestPath(guestPath);
  const mount = normaliseGuestPath(guestMount);
  if (!p || !mount || !p.startsWith(`${mount === '/' ? '' : mount}/`)) return undefined;
  const [id, name, ...rest] = p.slice(mount.length + 1).split('/').filter(Boolean);
  if (!id || !isDocumentId(id)) return undefined;
  const grant = await docs.lookup(vm, id);
  // The host dialog takes these as text; a host path that is not UTF-8 is simply not offered.
  const hostPath = grant && utf8OrUndefined(grant.pathBytes);
  if (!grant || !hostPath) return undefined;
  if (name === undefined) return path.dirname(hostPath);
  if (name !== utf8OrUndefined(grant.nameBytes)) return undefined;
  return rest.length ? path.join(hostPath, ...rest) : hostPath;
}

/** Where the guest finds a grant: `<mount>/<id>/<name>`, the name's bytes encoded as GLib does. */
export function guestUriOf(grant: Grant, guestMount: string): string {
  return fileUriOfBytes(Buffer.concat([Buffer.from(`${path.posix.join(guestMount, grant.id)}/`), grant.nameBytes]));
}

/** The same place as a path for people: `xdp-vm grants` prints it. */
export function guestPathOf(grant: Grant, guestMount: string): string {
  return path.posix.join(guestMount, grant.id, grant.name);
}

/** The local path of a file:// URI from the host dialog, as bytes; undefined for anything else. */
export function hostPathOfUri(uri: string): Buffer | undefined {
  return bytesOfFileUri(uri);
}
