import { z } from 'zod';

/**
 * The trust boundary for a link a VM wants opened. A guest sends a string;
 * what crosses on is the WHATWG URL parser's own serialisation of it (ASCII,
 * punycode host, percent-encoded path), so what the dialog shows, what the
 * audit names and what opens are one and the same URL, not the guest's
 * spelling of it. Only links cross, never files: file:, data:, javascript:
 * and every other scheme are refused here, on both sides of the link.
 *
 * No Node imports beyond the global URL: the guest half runs on Node 18.20.
 */
export const OPEN_URI_SCHEMES = ['http', 'https', 'mailto'] as const;
export type OpenUriScheme = (typeof OPEN_URI_SCHEMES)[number];

/** Longest link accepted, in bytes of UTF-8 (browsers take more; nobody clicks a longer one on purpose). */
export const MAX_URI_BYTES = 4096;
/** A DNS name is at most 253 characters; a longer "host" can only be meant to push the rest out of view. */
const MAX_HOST_CHARS = 253;

// Controls, format characters (bidi overrides, zero-width), and every space or separator:
// none belongs in a link, and each can make a link read differently from where it goes.
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Z}]/u;

export interface CheckedUri {
  /** The canonical URL: what is shown and what is opened. */
  href: string;
  scheme: OpenUriScheme;
  /** ASCII (punycode) host with a non-default port, e.g. "xn--pple-43d.com:8443"; empty for mailto. */
  host: string;
}

const byteLength = (s: string) => new TextEncoder().encode(s).length;

/** Why `raw` may not be opened, or the checked URL. */
export function checkUri(raw: string): { ok: true; uri: CheckedUri } | { ok: false; problem: string } {
  if (raw.length > MAX_URI_BYTES || byteLength(raw) > MAX_URI_BYTES) return { ok: false, problem: `a link is at most ${MAX_URI_BYTES} bytes` };
  if (INVISIBLE.test(raw)) return { ok: false, problem: 'a link must not contain control characters, invisible formatting or spaces' };
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { ok: false, problem: 'not a link the URL parser accepts' };
  }
  const scheme = url.protocol.replace(/:$/, '');
  if (!(OPEN_URI_SCHEMES as readonly string[]).includes(scheme)) {
    // Say which scheme only when it is short and plain: the guest chose it.
    const named = /^[a-z][a-z0-9+.-]{0,15}$/.test(scheme) ? `"${scheme}:" links` : 'links of that kind';
    return { ok: false, problem: `${named} are never opened; only ${OPEN_URI_SCHEMES.join(', ')} links cross from a VM` };
  }
  if (url.username || url.password) return { ok: false, problem: 'a link with a user name or password before its host (user@host) is refused: it is the classic way to disguise where a link goes' };
  if (scheme === 'mailto') {
    if (!url.pathname) return { ok: false, problem: 'an email link must name an address' };
  } else if (!url.hostname) {
    return { ok: false, problem: 'a web link must name a host' };
  } else if (url.hostname.length > MAX_HOST_CHARS) {
    return { ok: false, problem: `a host name is at most ${MAX_HOST_CHARS} characters` };
  }
  if (byteLength(url.href) > MAX_URI_BYTES) return { ok: false, problem: `a link is at most ${MAX_URI_BYTES} bytes, once written out in full` };
  return { ok: true, uri: { href: url.href, scheme: scheme as OpenUriScheme, host: url.host } };
}

/** A link on the wire, checked on receipt by both peers; the parsed value is the canonical URL. */
export const OpenableUri = z
  .string()
  .max(MAX_URI_BYTES)
  .transform((raw, ctx) => {
    const r = checkUri(raw);
    if (r.ok) return r.uri.href;
    ctx.addIssue({ code: 'custom', message: r.problem });
    return z.NEVER;
  });

/** Loopback names and addresses: a link there reaches a service on the user's own machine, not a web site. */
export function isLocalHost(host: string): boolean {
  const name = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '').toLowerCase();
  return name === 'localhost' || name.endsWith('.localhost') || /^127\./.test(name) || name === '::1' || name === '0.0.0.0';
}
