import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { requireProgram } from '../deps.js';
import { runProgram } from '../exec.js';
import { KeyFileError, parseKeyFile, stringList, stringValue } from './keyfile.js';

describe('parseKeyFile: what GKeyFile loads', () => {
  it('reads groups and keys; trims around the key and before the value, not after', () => {
    const kf = parseKeyFile('# comment\n\n[portal]\n  DBusName = org.x.y\nUseIn=gnome \t\n');
    expect(kf.get('portal')).toEqual(new Map([['DBusName', 'org.x.y'], ['UseIn', 'gnome \t']]));
  });

  it('keeps the last value of a repeated key, across repeated groups', () => {
    const kf = parseKeyFile('[a]\nk=1\n[b]\nx=2\n[a]\nk=3\n');
    expect(kf.get('a')?.get('k')).toBe('3');
  });

  it('drops locale keys, as g_key_file_get_keys does', () => {
    expect(parseKeyFile('[portal]\nDBusName=a.b\nDBusName[de]=c.d\n').get('portal')).toEqual(new Map([['DBusName', 'a.b']]));
  });

  it.each([
    ['a key before any group', 'k=v\n[a]\n'],
    ['an unterminated group', '[a\nk=v\n'],
    ['text after a group', '[a] x\n'],
    ['an empty group name', '[]\n'],
    ['a line that is nothing', '[a]\nnot a pair\n'],
    ['an empty key', '[a]\n=v\n'],
    ['a broken locale key', '[a]\nk[de=v\n'],
    ['a byte-order mark', '\ufeff[a]\n'],
    ['a NUL byte', '[a]\nk=v\0\n'],
    ['an encoding other than UTF-8', '[a]\nEncoding=ISO-8859-1\n'],
  ])('refuses %s', (_what, text) => {
    expect(() => parseKeyFile(text)).toThrow(KeyFileError);
  });

  it('refuses bytes that are not UTF-8', () => {
    expect(() => parseKeyFile(Buffer.from([0x5b, 0x61, 0x5d, 0x0a, 0x6b, 0x3d, 0xff, 0x0a]))).toThrow(KeyFileError);
  });
});

describe('string and list values', () => {
  it('splits lists on unescaped semicolons and drops only an empty last piece', () => {
    expect(stringList('a;b;')).toEqual(['a', 'b']);
    expect(stringList('a;;b')).toEqual(['a', '', 'b']);
    expect(stringList('gnome;;')).toEqual(['gnome', '']);
    expect(stringList(';')).toEqual(['']);
    expect(stringList('')).toEqual([]);
    expect(stringList('a ; b')).toEqual(['a ', ' b']);
    expect(stringList('a\\;b;c')).toEqual(['a;b', 'c']);
  });

  it('unescapes \\s \\n \\t \\r \\\\ and refuses anything else', () => {
    expect(stringValue('\\sx\\t\\\\')).toBe(' x\t\\');
    expect(() => stringValue('a\\;b')).toThrow(KeyFileError);
    expect(() => stringValue('x\\q')).toThrow(KeyFileError);
    expect(() => stringList('x\\')).toThrow(KeyFileError);
  });
});

/**
 * The same inputs through GLib's own GKeyFile (gjs), so a difference between
 * our reading and the frontend's shows up here rather than as a wrong backend.
 */
describe('agrees with GLib.KeyFile', () => {
  const CASES = [
    '[a]\nk = v1 ; v2 ; \n',
    '[a]\nk=v\nk=w\n',
    '[a]\nk=v\n[b]\nx=1\n[a]\nk=z\nj=2\n',
    '  [a]\n  k=v\n',
    '[a]\nnot a pair\n',
    'k=v\n[a]\n',
    '[a\nk=v\n',
    '[a]\nk=\\q\n',
    '[a]\nk=a\\;b;c\n',
    '[a]\nk=\n',
    '[a] x\nk=v\n',
    '[a]  \nk=v\n',
    '[a b]\nk=v\n',
    '[]\nk=v\n',
    '[a]\nk[de]=v\n',
    '[a]\nk[de=v\n',
    '[a]\nk]=v\n',
    '[a]\n=v\n',
    '[a]\nk k=v\n',
    '# c\n\n[a]\n;k=v\n',
    '[a]\nk=\\sx\\s\n',
    '[a]\nk=x\\\n',
    '[a]\r\nk=v\r\n',
    '[a]\nk=v\r\r\n',
    '[a]\nk\r=v\n',
    '[a]\nk  \t=  \tv \t\n',
    '[a]\nk=a;;b\n',
    '[a]\nk=;;\n',
    '[a]\nk=a\\\\;b\n',
    '[a]\nk=v=w\n',
    '[a]\n[a]]\nk=v\n',
    '[a[b]\nk=v\n',
    '[a]\nk=v',
    '[a]\nEncoding=UTF-8\n',
    '[a]\nEncoding=latin1\n',
    '[a]\nk[sr@latin]=v\nk[x.y-z_w]=v\n',
    '[portal]\nDBusName=org.freedesktop.impl.portal.desktop.gtk\nInterfaces=org.freedesktop.impl.portal.FileChooser;org.freedesktop.impl.portal.Print;\nUseIn=gnome\n',
    '[preferred]\ndefault=gnome;gtk;\norg.freedesktop.impl.portal.FileChooser=kde;*\n',
  ];

  const dir = mkdtempSync(path.join(tmpdir(), 'xdp-vm-keyfile-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function ours(text: string) {
    try {
      const kf = parseKeyFile(text);
      const out: Record<string, Record<string, { s: string; l: string[] | 'error' } | { s: 'error'; l: string[] | 'error' }>> = {};
      for (const [g, keys] of kf) {
        out[g] = {};
        for (const [k, raw] of keys) {
          const s = (() => {
            try {
              return stringValue(raw);
            } catch {
              return 'error';
            }
          })();
          const l = (() => {
            try {
              return stringList(raw);
            } catch {
              return 'error' as const;
            }
          })();
          out[g][k] = { s, l };
        }
      }
      return out;
    } catch {
      return 'error';
    }
  }

  it('on every case', async () => {
    const input = path.join(dir, 'cases.json');
    writeFileSync(input, JSON.stringify(CASES));
    const script = path.join(dir, 'glib.js');
    writeFileSync(
      script,
      `const { GLib } = imports.gi;
const bytes = GLib.file_get_contents(ARGV[0])[1];
const cases = JSON.parse(new TextDecoder().decode(bytes));
const out = cases.map((text) => {
  const kf = new GLib.KeyFile();
  const data = new TextEncoder().encode(text);
  try { kf.load_from_bytes(new GLib.Bytes(data), GLib.KeyFileFlags.NONE); } catch (e) { return 'error'; }
  const r = {};
  for (const g of kf.get_groups()[0]) {
    r[g] = {};
    for (const k of kf.get_keys(g)[0]) {
      let s, l;
      try { s = kf.get_string(g, k); } catch (e) { s = 'error'; }
      try { l = kf.get_string_list(g, k); } catch (e) { l = 'error'; }
      r[g][k] = { s, l };
    }
  }
  return r;
});
print(JSON.stringify(out));
`,
    );
    const { stdout } = await runProgram(requireProgram('gjs'), [script, input], { timeoutMs: 30_000 });
    const glib = JSON.parse(stdout) as unknown[];
    CASES.forEach((text, i) => expect(ours(text), JSON.stringify(text)).toEqual(glib[i]));
  });
});
