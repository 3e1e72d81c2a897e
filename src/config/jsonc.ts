/**
 * JSON with comments, for the host config: `//` to the end of the line and
 * `/* … *\/` blocks, outside strings, are blanked (each character becomes a
 * space, newlines stay), so JSON.parse's positions still point at the right
 * line and column of the file the user wrote. Nothing else changes: no
 * trailing commas, no single quotes. An unterminated block comment is left
 * as it is, for JSON.parse to refuse.
 */
export function stripJsonComments(text: string): string {
  let out = '';
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i]!;
    if (c === '"') {
      const start = i++;
      while (i < n && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
      out += text.slice(start, ++i);
    } else if (c === '/' && text[i + 1] === '/') {
      const end = text.indexOf('\n', i);
      const stop = end === -1 ? n : end;
      out += ' '.repeat(stop - i);
      i = stop;
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      if (end === -1) return out + text.slice(i);
      out += text.slice(i, end + 2).replace(/[^\n]/g, ' ');
      i = end + 2;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}
