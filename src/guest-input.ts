import { z } from 'zod';

/**
 * The trust boundary for what a guest sends: text, file names, ids and paths.
 *
 * Every piece of guest-supplied data that reaches a human (a host dialog, the
 * consent dialog, the terminal prompt) or a log goes through this module, so
 * there is one definition of "safe to show" and one of "a name". It has no
 * Node imports: the GJS consent dialog bundles it too.
 *
 * Shown text is made harmless, not faithful: characters that could disguise
 * or rearrange what the user reads (controls, bidi controls, invisible format
 * characters, blank-looking letters, tag characters) become visible escapes
 * such as `\u{202e}`, so the user can still see that the guest sent something
 * odd; runs of combining marks are cut; the length is capped. What the app
 * needs back (a filter name, a choice id) is never taken from the cleaned
 * text: callers keep the guest's own value and map the answer back to it.
 */

/**
 * Code points that must never be shown as they are:
 * - \p{Cc}: C0 and C1 controls (terminal escapes, CR, backspace);
 * - \p{Cf}: format characters: bidi controls (U+061C, U+200E/F, U+202A–E,
 *   U+2066–9), zero-width characters, U+00AD, U+180E, U+FEFF, tag characters;
 * - \p{Zl}, \p{Zp}: line and paragraph separators;
 * - letters that render as nothing: Hangul fillers (U+115F, U+1160, U+3164,
 *   U+FFA0), the blank Braille pattern (U+2800), Khmer inherent vowels
 *   (U+17B4/5), the combining grapheme joiner (U+034F);
 * - the whole tag block U+E0000–E007F, assigned or not.
 */
const HIDDEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0\u{e0000}-\u{e007f}]/u;
const SPACE = /[\p{Zs}\t]/u;
const MARK = /\p{M}/u;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** More combining marks than this on one base character are dropped (no "Zalgo" text over the host's words). */
export const MAX_COMBINING_MARKS = 4;

export interface GuestTextOptions {
  /** Cap in code points; longer text ends in "…". */
  max?: number;
  /** Keep line feeds (CRLF and CR become LF); otherwise every line break is a space. */
  multiline?: boolean;
  /** With `multiline`: keep at most this many lines and say how many were cut. */
  maxLines?: number;
}

function escapeCodePoint(cp: number): string {
  return cp <= 0xff ? `\\x${cp.toString(16).padStart(2, '0')}` : `\\u{${cp.toString(16)}}`;
}

/** Guest text as a host view may show it. Idempotent: showing shown text changes nothing. */
export function guestText(text: string, opts: GuestTextOptions = {}): string {
  const max = opts.max ?? 200;
  const input = text.replace(LONE_SURROGATE, '\ufffd').replace(/\r\n?/g, '\n');
  let out = '';
  let marks = 0;
  let count = 0;
  let lastWasSpace = true;
  for (const ch of input) {
    if (count >= max) {
      out = `${[...out].slice(0, Math.max(0, max - 1)).join('')}…`;
      count = -1;
      break;
    }
    let piece: string;
    if (ch === '\n' && opts.multiline) {
      piece = '\n';
      marks = 0;
    } else if (ch === '\n' || SPACE.test(ch)) {
      if (lastWasSpace) continue;
      piece = ' ';
      marks = 0;
    } else if (HIDDEN.test(ch)) {
      piece = escapeCodePoint(ch.codePointAt(0)!);
      marks = 0;
    } else if (MARK.test(ch)) {
      if (++marks > MAX_COMBINING_MARKS) continue;
      piece = ch;
    } else {
      piece = ch;
      marks = 0;
    }
    lastWasSpace = piece === ' ' || piece === '\n';
    out += piece;
    count += [...piece].length;
  }
  out = opts.multiline ? out.replace(/ +\n/g, '\n').trimEnd() : out.trimEnd();
  if (opts.multiline && opts.maxLines !== undefined) {
    const lines = out.split('\n');
    if (lines.length > opts.maxLines) {
      const cut = lines.length - opts.maxLines;
      out = `${lines.slice(0, opts.maxLines).join('\n')}\n… (${cut} more line${cut === 1 ? '' : 's'} not shown)`;
    }
  }
  return out;
}

/**
 * A guest-supplied value for a log line: cleaned like shown text, capped
 * short, and never an object (so nothing nested and uncapped rides along).
 * Put it under a key that says it came from the guest.
 */
export function guestLogText(value: unknown, max = 120): string {
  const s = typeof value === 'string' ? value : value === undefined ? '' : safeString(value);
  return guestText(s, { max });
}

function safeString(value: unknown): string {
  try {
    return typeof value === 'object' ? (JSON.stringify(value) ?? String(value)) : String(value);
  } catch {
    return '[unprintable]';
  }
}

/** Linux's NAME_MAX: a file name is at most this many bytes. */
export const MAX_NAME_BYTES = 255;
/** Linux's PATH_MAX, terminating NUL included. */
export const MAX_PATH_BYTES = 4096;

const utf8Length = (s: string) => new TextEncoder().encode(s).length;

/**
 * Why `name` is not a single path component, or undefined if it is one: not
 * empty, no "/", not "." or "..", no NUL, at most 255 bytes of UTF-8.
 */
export function nameProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (name.includes('/')) return 'contains "/"';
  if (name === '.' || name === '..') return `is "${name}"`;
  if (name.includes('\0')) return 'contains a NUL byte';
  if (utf8Length(name) > MAX_NAME_BYTES) return `is longer than ${MAX_NAME_BYTES} bytes`;
  return undefined;
}

/** A file name from a guest: exactly one path component. */
export const GuestFileName = z.string().superRefine((name, ctx) => {
  const problem = nameProblem(name);
  if (problem) ctx.addIssue({ code: 'custom', message: `a file name ${problem}; it must be one path component` });
});

/** An id of the document store, as it appears in a guest path. */
export const DocumentId = z.string().regex(/^[A-Za-z0-9]{1,64}$/);

export function isDocumentId(id: string): boolean {
  return DocumentId.safeParse(id).success;
}

/**
 * A guest's absolute path, lexically normalised ("." and ".." resolved, no
 * repeated "/"), or undefined when it is not absolute, holds a NUL, or is
 * longer than PATH_MAX. It means nothing on the host until a caller maps it.
 */
export function normaliseGuestPath(p: string): string | undefined {
  if (!p.startsWith('/') || p.includes('\0') || utf8Length(p) >= MAX_PATH_BYTES) return undefined;
  const parts: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') parts.pop();
    else parts.push(part);
  }
  return `/${parts.join('/')}`;
}
