import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { CONTROL_BUS_NAME } from './control.js';
import { dataPath, renderDataFile } from '../data-files.js';

/**
 * What `xdp-vm install-host` writes, computed as a plan first (as
 * install-guest does) so `--dry-run` shows exactly the files: the daemon's
 * systemd user unit, the D-Bus activation file of its bus name, and a
 * commented config skeleton that names every key. A manifest records each
 * file with the hash of what was written, so that
 *
 * - a file it did not write is never overwritten (without `--force`);
 * - a file it wrote and the user changed since (the config, above all) is
 *   kept, by a second install-host and by uninstall-host alike.
 */
export const HOST_UNIT = 'xdp-vm-host.service';
export const HOST_DBUS_SERVICE = `${CONTROL_BUS_NAME}.service`;

export interface HostPlannedFile {
  path: string;
  content: string;
  why: string;
  /** An existing file here is the user's and is kept, with or without --force (the config). */
  keepExisting?: boolean;
}

export interface HostPlan {
  files: HostPlannedFile[];
  /** Files left out because the system already provides them (a package, or install-host --system). */
  provided: { path: string; by: string }[];
  manifest: string;
  system: boolean;
}

export interface HostInstallOptions {
  /** Write under this directory as if it were / (tests, image builders). */
  root: string;
  /** The xdp-vm command the unit and the activation file run. */
  command: string;
  /** System-wide: /usr paths for every user, instead of the user's own. */
  system: boolean;
  /** HOME and the XDG_*_HOME variables the user paths come from (default: process.env). */
  env?: Record<string, string | undefined>;
}

export interface HostPaths {
  unit: string;
  dbusService: string;
  config: string;
  manifest: string;
}

/** System locations a user's systemd and dbus-daemon read, where a package or --system puts the unit and activation file. */
const SYSTEM_UNIT_DIRS = ['/etc/systemd/user', '/usr/local/lib/systemd/user', '/usr/lib/systemd/user', '/lib/systemd/user'];
const SYSTEM_DBUS_DIRS = ['/usr/local/share/dbus-1/services', '/usr/share/dbus-1/services'];

export function hostPaths(system: boolean, env: Record<string, string | undefined> = process.env): HostPaths {
  if (system) {
    return {
      unit: `/usr/lib/systemd/user/${HOST_UNIT}`,
      dbusService: `/usr/share/dbus-1/services/${HOST_DBUS_SERVICE}`,
      // The daemon reads each user's own config; this one is the example users start from.
      config: '/etc/xdp-vm/config.example.json',
      manifest: '/var/lib/xdp-vm/install-host.json',
    };
  }
  const home = env.HOME;
  if (!home || !path.isAbsolute(home)) throw new Error('HOME is not set to an absolute path: cannot find the user\'s config and unit folders');
  const xdg = (name: string, fallback: string) => {
    const v = env[name];
    return v && path.isAbsolute(v) ? v : path.join(home, fallback);
  };
  const configHome = xdg('XDG_CONFIG_HOME', '.config');
  return {
    unit: path.join(configHome, 'systemd', 'user', HOST_UNIT),
    dbusService: path.join(xdg('XDG_DATA_HOME', '.local/share'), 'dbus-1', 'services', HOST_DBUS_SERVICE),
    // Where `xdp-vm host` looks by default (without XDP_VM_CONFIG, which a unit does not see).
    config: path.join(configHome, 'xdp-vm', 'config.json'),
    manifest: path.join(xdg('XDG_STATE_HOME', '.local/state'), 'xdp-vm', 'install-host.json'),
  };
}

/** The commented config skeleton (data/host-config.jsonc): every key, all of them commented out but `vms`. */
export function configSkeleton(): string {
  return readFileSync(dataPath('host-config.jsonc'), 'utf8');
}

function providedBySystem(root: string, dirs: string[], name: string): string | undefined {
  return dirs.map((d) => `${d}/${name}`).find((p) => existsSync(path.join(root, p)));
}

export function planHostInstall(opts: HostInstallOptions): HostPlan {
  const p = hostPaths(opts.system, opts.env);
  const vars = { XDP_VM: opts.command };
  const files: HostPlannedFile[] = [];
  const provided: HostPlan['provided'] = [];
  const unitBy = opts.system ? undefined : providedBySystem(opts.root, SYSTEM_UNIT_DIRS, HOST_UNIT);
  if (unitBy) provided.push({ path: p.unit, by: unitBy });
  else files.push({ path: p.unit, content: renderDataFile('xdp-vm-host.service.in', vars), why: 'the host daemon as a systemd user unit (started with the graphical session)' });
  const dbusBy = opts.system ? undefined : providedBySystem(opts.root, SYSTEM_DBUS_DIRS, HOST_DBUS_SERVICE);
  if (dbusBy) provided.push({ path: p.dbusService, by: dbusBy });
  else files.push({ path: p.dbusService, content: renderDataFile(`${HOST_DBUS_SERVICE}.in`, vars), why: `D-Bus activation of ${CONTROL_BUS_NAME} (through the unit)` });
  files.push({
    path: p.config,
    content: configSkeleton(),
    keepExisting: true,
    why: opts.system ? 'the commented config skeleton, for users to copy to ~/.config/xdp-vm/config.json' : 'the commented config skeleton: every key, none set (edit it to add your VMs)',
  });
  return { files, provided, manifest: p.manifest, system: opts.system };
}

const Manifest = z.object({ files: z.array(z.object({ path: z.string(), sha256: z.string() })) });
type Manifest = z.infer<typeof Manifest>;

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

function readManifest(root: string, manifest: string): Manifest {
  const file = path.join(root, manifest);
  if (!existsSync(file)) return { files: [] };
  const parsed = Manifest.safeParse(JSON.parse(readFileSync(file, 'utf8')));
  if (!parsed.success) throw new Error(`${file} is not an install-host manifest; move it away`);
  return parsed.data;
}

export type FileState =
  /** Absent: written. */
  | 'new'
  /** Exactly as install-host last wrote it: rewritten. */
  | 'ours'
  /** Written by install-host, changed since: kept. */
  | 'changed'
  /** Present, and install-host did not write it: refused without --force. */
  | 'foreign';

export function fileStates(root: string, plan: HostPlan): Map<string, FileState> {
  const written = new Map(readManifest(root, plan.manifest).files.map((f) => [f.path, f.sha256]));
  const states = new Map<string, FileState>();
  for (const f of plan.files) {
    const target = path.join(root, f.path);
    if (!existsSync(target)) states.set(f.path, 'new');
    else if (!written.has(f.path)) states.set(f.path, 'foreign');
    else states.set(f.path, written.get(f.path) === sha256(readFileSync(target)) ? 'ours' : 'changed');
  }
  return states;
}

/** Files that exist, were not written by install-host, and may not be kept instead: refused without --force. */
export function clashes(root: string, plan: HostPlan): string[] {
  const states = fileStates(root, plan);
  return plan.files.filter((f) => !f.keepExisting && states.get(f.path) === 'foreign').map((f) => f.path);
}

/**
 * Write the plan: new files and our unchanged ones; changed ones are kept, and
 * foreign ones only with `force`. A `keepExisting` file (the config) is never overwritten. Returns what was written and what was kept.
 */
export function applyHostInstall(root: string, plan: HostPlan, force = false): { written: string[]; kept: string[] } {
  const states = fileStates(root, plan);
  const before = new Map(readManifest(root, plan.manifest).files.map((f) => [f.path, f.sha256]));
  const written: string[] = [];
  const kept: string[] = [];
  for (const f of plan.files) {
    const state = states.get(f.path)!;
    if ((state === 'changed' || state === 'foreign') && (f.keepExisting || !force)) {
      // A foreign file without --force is the caller's to refuse first (see clashes()); kept all the same.
      kept.push(f.path);
      continue;
    }
    const target = path.join(root, f.path);
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, f.content, { mode: 0o644 });
    before.set(f.path, sha256(f.content));
    written.push(f.path);
  }
  const manifest = path.join(root, plan.manifest);
  mkdirSync(path.dirname(manifest), { recursive: true });
  const files = [...before].map(([p, h]) => ({ path: p, sha256: h }));
  writeFileSync(manifest, `${JSON.stringify({ files } satisfies Manifest, null, 2)}\n`, { mode: 0o644 });
  return { written, kept };
}

/** Remove what the manifest lists, unless changed since; returns what was removed and what was kept. */
export function uninstallHost(root: string, system: boolean, env?: Record<string, string | undefined>): { removed: string[]; kept: string[] } {
  const manifestPath = hostPaths(system, env).manifest;
  const manifestFile = path.join(root, manifestPath);
  if (!existsSync(manifestFile)) throw new Error(`nothing to remove: ${manifestPath} does not exist (was install-host${system ? ' --system' : ''} run${root === '/' ? '' : ' with this --root'}?)`);
  const removed: string[] = [];
  const kept: string[] = [];
  for (const f of readManifest(root, manifestPath).files) {
    if (!path.isAbsolute(f.path) || f.path.split('/').includes('..')) continue;
    const target = path.join(root, f.path);
    if (!existsSync(target)) continue;
    if (sha256(readFileSync(target)) !== f.sha256) {
      kept.push(f.path);
      continue;
    }
    rmSync(target);
    removed.push(f.path);
  }
  rmSync(manifestFile);
  return { removed, kept };
}
