import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

/**
 * The file chooser's sidebar in the guest: GTK 3 and GTK 4 (and the portal's
 * GTK backend) list $XDG_CONFIG_HOME/gtk-3.0/bookmarks, one "URI label" per
 * line. A folder share adds its line when mounted and takes it away when
 * unmounted; the user's own lines are left exactly as they were.
 */
export function bookmarksFile(env: NodeJS.ProcessEnv = process.env): string {
  const config = env.XDG_CONFIG_HOME || path.join(env.HOME || homedir(), '.config');
  return path.join(config, 'gtk-3.0', 'bookmarks');
}

function lineOf(folder: string, label: string): string {
  return `${pathToFileURL(folder).href} ${label}`;
}

function read(file: string): string[] {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0) : [];
}

function write(file: string, lines: string[]): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.xdp-vm.tmp`;
  writeFileSync(tmp, lines.length ? `${lines.join('\n')}\n` : '');
  renameSync(tmp, file);
}

/** Add "folder label" unless the folder is there already; true when added. */
export function addBookmark(folder: string, label: string, file = bookmarksFile()): boolean {
  const lines = read(file);
  const uri = pathToFileURL(folder).href;
  if (lines.some((l) => l === uri || l.startsWith(`${uri} `))) return false;
  write(file, [...lines, lineOf(folder, label)]);
  return true;
}

/** Take the folder's line away; true when there was one. */
export function removeBookmark(folder: string, file = bookmarksFile()): boolean {
  const lines = read(file);
  const uri = pathToFileURL(folder).href;
  const rest = lines.filter((l) => l !== uri && !l.startsWith(`${uri} `));
  if (rest.length === lines.length) return false;
  write(file, rest);
  return true;
}
