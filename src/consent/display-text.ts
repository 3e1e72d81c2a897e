/**
 * Neutralises untrusted text before a trusted view shows it. Shared by the GTK dialog (bundled into
 * the GJS program) and the terminal prompt, so a guest string looks the same in both.
 *
 * Markup is not handled here: the dialog uses non-markup labels and the terminal has none. What is
 * handled is everything that could make the text act instead of just being read:
 *   - terminal controls (ESC sequences, CR, backspace, BEL…) could repaint or clear the prompt;
 *   - bidi overrides and isolates could make "deny" read as something else, or reorder the host's
 *     own words around them;
 *   - line/paragraph separators and lone surrogates render inconsistently or break UTF-8 encoders.
 * Each becomes a visible escape such as `\x1b` or `\u{202e}`, so the user can still see that the
 * guest sent something odd.
 */

const BIDI_AND_SEPARATORS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

function escapeCodePoint(cp: number): string {
  return cp <= 0xff ? `\\x${cp.toString(16).padStart(2, '0')}` : `\\u{${cp.toString(16)}}`;
}

export interface NeutraliseOptions {
  /** Keep line feeds (after turning CRLF into LF); otherwise they become `\x0a` too. */
  multiline?: boolean;
  /** Keep at most this many lines, adding a note about what was cut. */
  maxLines?: number;
}

export function neutralise(text: string, opts: NeutraliseOptions = {}): string {
  const cleaned = text.replace(LONE_SURROGATE, '\ufffd').replace(/\r\n/g, '\n');
  let out = '';
  for (const ch of cleaned) {
    const cp = ch.codePointAt(0) ?? 0;
    const keep = (ch === '\n' && opts.multiline) || ch === '\t';
    if (keep) out += ch;
    else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || BIDI_AND_SEPARATORS.test(ch)) out += escapeCodePoint(cp);
    else out += ch;
  }
  if (opts.multiline && opts.maxLines !== undefined) {
    const lines = out.split('\n');
    if (lines.length > opts.maxLines) {
      const cut = lines.length - opts.maxLines;
      out = `${lines.slice(0, opts.maxLines).join('\n')}\n… (${cut} more line${cut === 1 ? '' : 's'} not shown)`;
    }
  }
  return out;
}
