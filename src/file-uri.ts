/**
 * file:// URIs of byte paths. Linux file names are bytes and need not be
 * UTF-8, so a path here is a Buffer, and a URI is made the way GLib's
 * g_filename_to_uri makes it: every byte outside the unreserved set and the
 * sub-delimiters allowed in a path is percent-encoded, so apps in the guest
 * (GLib, Qt) turn it back into exactly the same bytes.
 */
const ALLOWED = new Set(Buffer.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"));
const SLASH = 0x2f;

export function fileUriOfBytes(p: Buffer): string {
  let out = 'file://';
  for (const b of p) out += ALLOWED.has(b) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  return out;
}

/**
 * The absolute local path a file:// URI names, as bytes; undefined for any
 * other URI, a remote host, a malformed escape or an embedded NUL.
 */
export function bytesOfFileUri(uri: string): Buffer | undefined {
  const m = /^file:\/\/(localhost)?(\/[^?#]*)$/i.exec(uri);
  if (!m) return undefined;
  const encoded = m[2]!;
  const out: number[] = [];
  for (let i = 0; i < encoded.length; i++) {
    const ch = encoded[i]!;
    if (ch === '%') {
      const hex = encoded.slice(i + 1, i + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(hex)) return undefined;
      out.push(parseInt(hex, 16));
      i += 2;
    } else out.push(...Buffer.from(ch, 'utf8'));
  }
  const bytes = Buffer.from(out);
  return bytes.includes(0) ? undefined : bytes;
}

export function dirnameBytes(p: Buffer): Buffer {
  const i = p.lastIndexOf(SLASH);
  return i <= 0 ? Buffer.from('/') : p.subarray(0, i);
}

export function basenameBytes(p: Buffer): Buffer {
  return p.subarray(p.lastIndexOf(SLASH) + 1);
}

/** Bytes as text for people and logs: valid UTF-8 as it is, any other byte as `\xNN`. */
export function displayBytes(p: Buffer): string {
  let out = '';
  let i = 0;
  const strict = new TextDecoder('utf-8', { fatal: true });
  while (i < p.length) {
    const b = p[i]!;
    const len = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (len > 0 && i + len <= p.length) {
      try {
        out += strict.decode(p.subarray(i, i + len));
        i += len;
        continue;
      } catch {
        /* not a valid sequence: escape its first byte */
      }
    }
    out += `\\x${b.toString(16).padStart(2, '0')}`;
    i++;
  }
  return out;
}

/** The bytes as UTF-8 text, or undefined when they are not valid UTF-8. */
export function utf8OrUndefined(p: Buffer): string | undefined {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(p);
  } catch {
    return undefined;
  }
}
