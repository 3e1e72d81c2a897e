import { existsSync } from 'node:fs';
import path from 'node:path';
import { whichProgram } from '../../src/deps.js';
import { runProgram, startService } from '../../src/exec.js';
import type { Logger } from '../../src/log.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import { OPEN_ON_HOST_DESKTOP_ID } from './handler.js';

/**
 * A target VM opening a link it was sent, with its own default handler for
 * the scheme, as GLib (and so GNOME, and `gio open`) picks it from
 * mimeapps.list and the desktop files. Our own "Open on host" is skipped:
 * install-guest makes it the default, and launching it would send the link
 * back. GLib does the choosing (`gio mime`) and the launching (`gio launch`,
 * GLib 2.72 or newer), argv only; we only read its answer.
 */
const DESKTOP_ID = /^[A-Za-z0-9_.+-]+\.desktop$/;
const GIO_MS = 10_000;

export interface MimeHandlers {
  default: string | undefined;
  /** Registered, then recommended, in GLib's order, each once. */
  others: string[];
}

/** `LC_ALL=C gio mime TYPE`'s answer: the default application, then the lists under their headings. */
export function parseGioMime(stdout: string): MimeHandlers {
  const def = /^Default application for .*: (\S+)$/m.exec(stdout)?.[1];
  const others: string[] = [];
  let inList = false;
  for (const line of stdout.split('\n')) {
    if (/^(Registered|Recommended) applications:$/.test(line)) inList = true;
    else if (/^\t\S/.test(line)) {
      const id = line.trim();
      if (inList && DESKTOP_ID.test(id) && !others.includes(id)) others.push(id);
    } else inList = false;
  }
  return { default: def && DESKTOP_ID.test(def) ? def : undefined, others };
}

/** The handler to launch: the default unless it is ours, else the first other one GLib knows. */
export function pickHandler(h: MimeHandlers): string | undefined {
  if (h.default && h.default !== OPEN_ON_HOST_DESKTOP_ID) return h.default;
  return h.others.find((id) => id !== OPEN_ON_HOST_DESKTOP_ID);
}

/**
 * Where desktop file `id` is, by the desktop entry spec: under each
 * applications/ folder of $XDG_DATA_HOME then $XDG_DATA_DIRS, with "-" in the
 * id standing for a subfolder ("kde-foo.desktop" may be kde/foo.desktop).
 */
export function findDesktopFile(id: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const home = env.XDG_DATA_HOME || (env.HOME ? path.join(env.HOME, '.local/share') : undefined);
  const dirs = [home, ...(env.XDG_DATA_DIRS || '/usr/local/share:/usr/share').split(':')].filter((d): d is string => !!d && path.isAbsolute(d));
  const parts = id.split('-');
  for (const dir of dirs) {
    for (let i = 0; i < parts.length; i++) {
      const rel = [...parts.slice(0, i), parts.slice(i).join('-')].join('/');
      const file = path.join(dir, 'applications', rel);
      if (existsSync(file)) return file;
    }
  }
  return undefined;
}

/** Launch this VM's own handler for `uri` (already checked: an http, https or mailto URL). */
export async function launchHere(uri: string, log: Logger): Promise<{ launched: true; handler: string }> {
  const scheme = new URL(uri).protocol.replace(/:$/, '');
  const gio = whichProgram(['gio']);
  if (!gio) throw new ProtocolError('failed', 'this VM has no gio to launch its link handler with (Debian: apt-get install libglib2.0-bin)');
  const { stdout } = await runProgram(gio, ['mime', `x-scheme-handler/${scheme}`], { inheritEnv: true, env: { LC_ALL: 'C' }, timeoutMs: GIO_MS });
  const handler = pickHandler(parseGioMime(stdout));
  if (!handler) throw new ProtocolError('failed', `it has no handler for ${scheme} links other than "Open on host"; set one there, e.g. in ~/.config/mimeapps.list`);
  const file = findDesktopFile(handler);
  if (!file) throw new ProtocolError('failed', `its ${scheme} handler ${handler} has no desktop file in its applications folders`);
  // No pipes: the handler (a browser) inherits gio's output and may run for hours.
  const launch = startService(`gio launch ${handler}`, gio, ['launch', file, uri], { inheritEnv: true, stdio: 'ignore' });
  const timer = setTimeout(() => launch.kill('SIGKILL'), GIO_MS);
  const exit = await launch.exited.finally(() => clearTimeout(timer));
  if (exit.code !== 0) throw new ProtocolError('failed', `gio launch ${handler} ${exit.code === null ? `was killed by ${exit.signal}` : `exited with status ${exit.code}`}`);
  log.info({ portal: 'OpenURI', scheme, handler }, 'launched this VM\'s own handler for a link from another VM');
  return { launched: true, handler };
}
