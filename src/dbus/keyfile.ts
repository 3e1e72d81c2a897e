/**
 * The part of GLib's GKeyFile that xdg-desktop-portal relies on to read
 * `*.portal` and `portals.conf` files: what loads, what is a group or a key,
 * and how `g_key_file_get_string` and `g_key_file_get_string_list` unescape.
 * Choosing a portal backend "as the frontend would" is only exact if we read
 * those files as the frontend reads them, so every rule here was checked
 * against GLib itself (src/dbus/keyfile.test.ts compares with GLib.KeyFile
 * through gjs). Anything GLib would refuse is a KeyFileError.
 */
export class KeyFileError extends Error {
  override name = 'KeyFileError';
}

/** Groups in file order; within a group, raw (still escaped) values by key. Locale keys (`Name[de]`) are dropped, as g_key_file_get_keys drops them. */
export type KeyFile = Map<string, Map<string, string>>;

const utf8 = new TextDecoder('utf-8', { fatal: true });
/** g_ascii_isspace */
const isSpace = (c: string | undefined) => c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\v' || c === '\f';
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

function isGroupName(name: string): boolean {
  return name.length > 0 && !/[[\]]/.test(name) && !CONTROL.test(name);
}

/** g_key_file_is_key_name: no `[`/`]` except one trailing locale suffix, no leading or trailing space. */
function isKeyName(key: string): { ok: boolean; locale: boolean } {
  const m = /^([^[\]=]+)(?:\[([\p{L}\p{N}\-_.@]*)\])?$/u.exec(key);
  if (!m || m[1]!.startsWith(' ') || m[1]!.endsWith(' ')) return { ok: false, locale: false };
  return { ok: true, locale: m[2] !== undefined };
}

export function parseKeyFile(data: string | Uint8Array): KeyFile {
  let text: string;
  try {
    text = typeof data === 'string' ? data : utf8.decode(data);
  } catch {
    throw new KeyFileError('not valid UTF-8');
  }
  // GLib reads C strings; a NUL would end the buffer somewhere we cannot predict.
  if (text.includes('\0')) throw new KeyFileError('contains a NUL byte');
  const groups: KeyFile = new Map();
  let current: Map<string, string> | undefined;
  let first: Map<string, string> | undefined;
  for (let raw of text.split('\n')) {
    if (raw.endsWith('\r')) raw = raw.slice(0, -1);
    let start = 0;
    while (isSpace(raw[start])) start++;
    const line = raw.slice(start);
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('[')) {
      const close = line.indexOf(']');
      if (close < 0 || !/^[ \t]*$/.test(line.slice(close + 1))) throw new KeyFileError(`line "${line}" is not a key-value pair, group, or comment`);
      const name = line.slice(1, close);
      if (!isGroupName(name)) throw new KeyFileError(`invalid group name: ${name}`);
      current = groups.get(name);
      if (!current) groups.set(name, (current = new Map()));
      first ??= current;
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) throw new KeyFileError(`line "${line}" is not a key-value pair, group, or comment`);
    if (!current) throw new KeyFileError('the file does not start with a group');
    let keyEnd = eq;
    while (keyEnd > 0 && isSpace(line[keyEnd - 1])) keyEnd--;
    const key = line.slice(0, keyEnd);
    const name = isKeyName(key);
    if (!name.ok) throw new KeyFileError(`invalid key name: ${key}`);
    let valueStart = eq + 1;
    while (isSpace(line[valueStart])) valueStart++;
    const value = line.slice(valueStart);
    if (current === first && key === 'Encoding' && value.toLowerCase() !== 'utf-8') throw new KeyFileError(`unsupported encoding ${value}`);
    if (name.locale) continue;
    // A repeated key keeps its last value, across repeated groups too.
    current.set(key, value);
  }
  return groups;
}

const ESCAPES: Record<string, string> = { s: ' ', n: '\n', t: '\t', r: '\r', '\\': '\\' };

/** g_key_file_get_string_list's splitting: `\;` is a literal semicolon, a final empty piece is dropped, nothing is trimmed. */
export function stringList(raw: string): string[] {
  const pieces: string[] = [];
  let piece = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c === '\\') {
      const next = raw[++i];
      if (next === ';') piece += ';';
      else if (next !== undefined && next in ESCAPES) piece += ESCAPES[next];
      else throw new KeyFileError(`value "${raw}" cannot be interpreted`);
    } else if (c === ';') {
      pieces.push(piece);
      piece = '';
    } else piece += c;
  }
  if (piece !== '') pieces.push(piece);
  return pieces;
}

/** g_key_file_get_string: the same escapes, but `\;` is an error. */
export function stringValue(raw: string): string {
  let out = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c !== '\\') {
      out += c;
      continue;
    }
    const next = raw[++i];
    if (next === undefined || !(next in ESCAPES)) throw new KeyFileError(`value "${raw}" cannot be interpreted`);
    out += ESCAPES[next];
  }
  return out;
}
