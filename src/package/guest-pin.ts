import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { PinTemplate } from './guest-files.js';

/**
 * The guest package's postinst work, as `xdp-vm install-guest` does it for
 * xdg-desktop-portal 1.16 (src/guest/install.ts, pinFor116): a portal folder
 * where only the VM backend offers our interfaces (our vm.portal, and every
 * other backend's .portal file without them) and the drop-in that points the
 * frontend at it. From 1.17 on, portals.conf (shipped) does it, and nothing
 * is written. Only node: built-ins here: the helper runs without the CLI's
 * dependencies, on Debian 12's Node.js 18.
 */
const SYSTEM_PORTAL_DIR = '/usr/share/xdg-desktop-portal/portals';

export interface PinFile {
  path: string;
  content: string;
}

export function atLeast117(version: string): boolean {
  const [a = 0, b = 0] = version.replace(/^\d+:/, '').split('.').map((n) => parseInt(n, 10) || 0);
  return a > 1 || (a === 1 && b >= 17);
}

/** A backend's .portal file without our interfaces; undefined when nothing is left. */
export function withoutInterfaces(portalFile: string, ours: readonly string[]): string | undefined {
  const m = /^Interfaces=(.*)$/m.exec(portalFile);
  if (!m) return portalFile;
  const kept = m[1]!.split(';').filter((i) => i && !ours.includes(i));
  if (kept.length === 0) return undefined;
  return portalFile.replace(m[0], `Interfaces=${kept.join(';')};`);
}

export function pinFiles(root: string, portalVersion: string, t: PinTemplate): PinFile[] {
  if (atLeast117(portalVersion)) return [];
  const files: PinFile[] = [{ path: `${t.pinDir}/vm.portal`, content: t.vmPortal }];
  const systemDir = path.join(root, SYSTEM_PORTAL_DIR);
  for (const name of existsSync(systemDir) ? readdirSync(systemDir).filter((n) => n.endsWith('.portal') && n !== 'vm.portal') : []) {
    const filtered = withoutInterfaces(readFileSync(path.join(systemDir, name), 'utf8'), t.interfaces);
    if (filtered) files.push({ path: `${t.pinDir}/${name}`, content: filtered });
  }
  files.push(t.dropIn);
  return files;
}

const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

/**
 * Write the pin, remove what an earlier run wrote that is no longer planned,
 * and never touch a file outside our own folder that the package did not
 * write (it carries our mark, or is listed from an earlier run).
 */
export function configureGuest(root: string, portalVersion: string, t: PinTemplate, log: (line: string) => void = console.log): { written: string[]; removed: string[]; skipped: string[] } {
  const at = (p: string) => path.join(root, p);
  const previous = existsSync(at(t.list)) ? readFileSync(at(t.list), 'utf8').split('\n').filter(Boolean) : [];
  const ours = (p: string) => p.startsWith(`${t.stateDir}/`) || (existsSync(at(p)) && readFileSync(at(p), 'utf8').includes(t.mark));
  const files = pinFiles(root, portalVersion, t);
  const planned = new Set(files.map((f) => f.path));
  const removed: string[] = [];
  for (const p of previous) {
    if (planned.has(p) || !existsSync(at(p)) || !ours(p)) continue;
    rmSync(at(p));
    removed.push(p);
  }
  const written: string[] = [];
  const skipped: string[] = [];
  for (const f of files) {
    const target = at(f.path);
    if (existsSync(target) && !previous.includes(f.path) && !ours(f.path)) {
      log(`${t.packageName}: not overwriting ${f.path}: this package did not write it`);
      skipped.push(f.path);
      continue;
    }
    if (!existsSync(target) || sha(readFileSync(target)) !== sha(f.content)) {
      mkdirSync(path.dirname(target), { recursive: true });
      writeFileSync(target, f.content, { mode: 0o644 });
    }
    written.push(f.path);
  }
  mkdirSync(path.dirname(at(t.list)), { recursive: true });
  writeFileSync(at(t.list), written.map((p) => `${p}\n`).join(''), { mode: 0o644 });
  if (written.length) log(`${t.packageName}: xdg-desktop-portal ${portalVersion} ignores portals.conf: pinned the VM backend with ${t.pinDir} and ${t.dropIn.path}`);
  else if (removed.length) log(`${t.packageName}: xdg-desktop-portal ${portalVersion} reads portals.conf: removed the pinned portal folder`);
  return { written, removed, skipped };
}
