/**
 * Manual pages from the CLI's own --help text, so the two never disagree.
 * The --help texts share one shape (see src/cli/verb-*.ts):
 *
 *   Usage: xdp-vm VERB ...          SYNOPSIS (with any further indented
 *          xdp-vm VERB2 ...         "xdp-vm" lines)
 *   <blank>
 *   paragraphs of prose             DESCRIPTION
 *     --option ARG   what it does   OPTIONS: a line starting with "-",
 *                    continued      continued by lines indented further
 *     other indented lines          kept as they are (.nf)
 *
 * Anything that does not fit is kept verbatim, never dropped.
 */
export interface ManPage {
  /** The page's name, e.g. "xdp-vm-host". */
  name: string;
  /** Every command the page documents, for NAME (default: just `name`). */
  names?: string[];
  section: number;
  /** One line for NAME. */
  summary: string;
  /** The command's --help output. */
  help: string;
  /** e.g. "xdp-vm 0.1.0". */
  source: string;
  /** YYYY-MM-DD. */
  date: string;
  manual?: string;
  seeAlso?: string[];
  /** Extra sections after DESCRIPTION/OPTIONS, already in roff. */
  extra?: string;
}

/** Escape text for roff: backslashes, a leading control character, and hyphens in option-like words. */
export function roffText(text: string): string {
  let s = text.replace(/\\/g, '\\e');
  // An option word (-h, --no-shares) gets real minus signs; other hyphens stay hyphens.
  s = s.replace(/(^|[\s[(|=,])(--?[A-Za-z0-9][-A-Za-z0-9]*)/g, (_m, before: string, word: string) => `${before}${word.replace(/-/g, '\\-')}`);
  if (/^[.']/.test(s)) s = `\\&${s}`;
  return s;
}

function roffLines(lines: string[]): string {
  return lines.map((l) => roffText(l)).join('\n');
}

interface Block {
  kind: 'para' | 'options' | 'verbatim';
  lines: string[];
}

const indentOf = (l: string) => /^ */.exec(l)![0].length;

/** Split the body (after the usage) into prose paragraphs, option lists and verbatim blocks. */
function blocks(body: string[]): Block[] {
  const out: Block[] = [];
  let i = 0;
  while (i < body.length) {
    const line = body[i]!;
    if (line.trim() === '') {
      i++;
      continue;
    }
    if (indentOf(line) === 0) {
      const lines: string[] = [];
      while (i < body.length && body[i]!.trim() !== '' && indentOf(body[i]!) === 0) lines.push(body[i++]!);
      out.push({ kind: 'para', lines });
      continue;
    }
    if (/^ +-/.test(line)) {
      const lines: string[] = [];
      while (i < body.length && body[i]!.trim() !== '' && indentOf(body[i]!) > 0) lines.push(body[i++]!);
      out.push({ kind: 'options', lines });
      continue;
    }
    const lines: string[] = [];
    while (i < body.length && body[i]!.trim() !== '' && indentOf(body[i]!) > 0) lines.push(body[i++]!);
    out.push({ kind: 'verbatim', lines });
  }
  return out;
}

/**
 * One option list: each entry is "  --opt ARG   text", continued by lines at
 * the text's column (prose, joined) or deeper (a nested list: the entry's
 * text is then kept line by line).
 */
function optionsRoff(lines: string[]): string {
  const base = indentOf(lines[0]!);
  const entries: { tag: string; col: number; text: string[] }[] = [];
  for (const l of lines) {
    const m = /^( *)(-\S.*?)(?: {2,}(\S.*))?$/.exec(l);
    if (m && m[1]!.length === base) entries.push({ tag: m[2]!, col: m[3] ? l.indexOf(m[3], m[1]!.length + m[2]!.length) : base + 4, text: m[3] ? [m[3]] : [] });
    else if (entries.length) entries.at(-1)!.text.push(l.trimEnd());
    else entries.push({ tag: '', col: base, text: [l.trim()] });
  }
  return entries
    .map((e) => {
      const rest = e.text.slice(1);
      const nested = rest.some((t) => indentOf(t) > e.col);
      const body = nested
        ? `.nf\n${roffLines([e.text[0]!, ...rest.map((t) => t.slice(Math.min(e.col, indentOf(t))))])}\n.fi`
        : roffLines([e.text.map((t) => t.trim()).join(' ')]);
      return `.TP\n.B ${roffText(e.tag)}\n${body}`;
    })
    .join('\n');
}

export function helpToMan(page: ManPage): string {
  const lines = page.help.replace(/\s+$/, '').split('\n');
  const synopsis: string[] = [];
  let i = 0;
  if (/^Usage: /.test(lines[0] ?? '')) {
    synopsis.push(lines[0]!.replace(/^Usage: +/, ''));
    i = 1;
    while (i < lines.length && /^ +\S/.test(lines[i]!) && lines[i]!.trim() !== '') {
      const l = lines[i++]!;
      // "       xdp-vm other ..." starts a new form; deeper lines continue the previous one.
      if (/^ +xdp-vm /.test(l)) synopsis.push(l.trim());
      else synopsis[synopsis.length - 1] += ` ${l.trim()}`;
    }
  }
  const body = blocks(lines.slice(i));
  const description: string[] = [];
  const options: string[] = [];
  for (const b of body) {
    if (b.kind === 'para') description.push(`.PP\n${roffLines(b.lines)}`);
    else if (b.kind === 'verbatim') description.push(`.PP\n.RS\n.nf\n${roffLines(b.lines.map((l) => l.replace(/^ {2}/, '')))}\n.fi\n.RE`);
    else options.push(optionsRoff(b.lines));
  }
  const out = [
    `.\\" Generated from \`${page.name.replace(/^xdp-vm-/, 'xdp-vm ')} --help\` by src/package/man.ts; do not edit.`,
    `.TH ${page.name.toUpperCase()} ${page.section} ${page.date} "${page.source}" "${page.manual ?? 'User Commands'}"`,
    '.SH NAME',
    `${(page.names ?? [page.name]).map(roffText).join(', ')} \\- ${roffText(page.summary)}`,
  ];
  if (synopsis.length) out.push('.SH SYNOPSIS', synopsis.map((s) => `.nf\n${roffText(s)}\n.fi`).join('\n.br\n'));
  if (description.length) out.push('.SH DESCRIPTION', ...description);
  if (options.length) out.push('.SH OPTIONS', ...options);
  if (page.extra) out.push(page.extra);
  if (page.seeAlso?.length) out.push('.SH SEE ALSO', page.seeAlso.map((s) => roffText(s)).join(',\n'));
  return `${out.join('\n')}\n`;
}
