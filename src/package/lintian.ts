import { execa } from 'execa';

export interface LintianReport {
  /** Each tag line, e.g. "W: xdg-desktop-portal-vm-host: some-tag detail". */
  lines: string[];
  counts: Partial<Record<'error' | 'warning' | 'info' | 'pedantic' | 'experimental' | 'classification', number>>;
  overridden: number;
}

const KIND: Record<string, keyof LintianReport['counts']> = { E: 'error', W: 'warning', I: 'info', P: 'pedantic', X: 'experimental', C: 'classification' };

/** Run Debian's lintian on built .deb files: every tag down to info, never failing on its own exit status. */
export async function lintian(debs: string[]): Promise<LintianReport> {
  // lintian's exit status says whether it found errors; the report is on stdout either way.
  const r = await execa('lintian', ['--display-info', '--no-tag-display-limit', '--show-overrides', ...debs], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' }, extendEnv: false, reject: false, timeout: 600_000 });
  if (r.failed && r.exitCode !== 1) throw new Error(`lintian failed (${r.exitCode ?? r.signal}): ${String(r.stderr).trim().split('\n').slice(-5).join('\n')}`);
  const stdout = String(r.stdout);
  const lines = stdout.split('\n').filter((l) => /^[EWIPXCO]: /.test(l));
  const counts: LintianReport['counts'] = {};
  let overridden = 0;
  for (const l of lines) {
    if (l.startsWith('O: ')) overridden++;
    else {
      const k = KIND[l[0]!]!;
      counts[k] = (counts[k] ?? 0) + 1;
    }
  }
  return { lines, counts, overridden };
}
