import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import path from 'node:path';
import { runProgram } from '../exec.js';
import type { Bus } from './bus.js';
import { KeyFileError, parseKeyFile, stringList, stringValue, type KeyFile } from './keyfile.js';

/**
 * Which backend the host's xdg-desktop-portal uses for an interface, worked
 * out the way that frontend works it out, so that we can call the same
 * backend directly (the frontend keeps a backend's `writable` answer from
 * unsandboxed callers such as our daemon). Each rule set below is a reading
 * of one range of upstream releases, and nothing else: for a version we have
 * not read, or anything else we cannot be sure the frontend saw the same way,
 * the answer is "unsure" and the caller goes through the frontend as before.
 *
 * Upstream sources read (flatpak/xdg-desktop-portal):
 *   1.16.0          src/portal-impl.c
 *   1.18.4          src/portal-impl.c
 *   1.19.1–1.20.x   src/xdp-portal-impl.c (1.20.1 added the portal search path)
 *   1.21.2–1.22.x   src/xdp-portal-config.c
 */
export interface FrontendFacts {
  /** e.g. "1.16.0" */
  version: string;
  /** The frontend's own environment: it, not ours, decides. */
  env: Readonly<Record<string, string | undefined>>;
  /** Its compiled-in ${datadir} and ${sysconfdir}. */
  datadir: string;
  sysconfdir: string;
  /** When it started (ms since the epoch): it read its files then, and never again. */
  startedAtMs?: number;
}

export type BackendChoice =
  | { kind: 'backend'; dbusName: string; portalFile: string; rules: string; how: string }
  | { kind: 'unsure'; why: string };

type Selection = 'use-in-then-any' | 'sorted-match' | 'first-listed' | 'cascade';

interface Rules {
  /** The upstream releases these rules were read from. */
  name: string;
  selection: Selection;
  /** ≥ 1.20.1: portals from XDG_DATA_HOME, XDG_DATA_DIRS and ${datadir}, not only ${datadir}. */
  portalSearchPath: boolean;
}

function parseVersion(v: string): [number, number, number] | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)$/.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

/** The rule set of a frontend version, or undefined when we have not read that version's source. */
export function rulesFor(version: string): Rules | undefined {
  const v = parseVersion(version);
  if (!v) return undefined;
  const [major, minor, micro] = v;
  if (major !== 1) return undefined;
  // 1.16.1 already skips backends it cannot start (a "dummy proxy"): not modelled.
  if (minor === 16 && micro === 0) return { name: 'xdg-desktop-portal 1.16.0', selection: 'use-in-then-any', portalSearchPath: false };
  if (minor === 18 && micro === 4) return { name: 'xdg-desktop-portal 1.18.4', selection: 'sorted-match', portalSearchPath: false };
  if ((minor === 19 && micro >= 1) || minor === 20) {
    return { name: 'xdg-desktop-portal 1.19.1–1.20.x', selection: 'first-listed', portalSearchPath: minor === 20 && micro >= 1 };
  }
  if ((minor === 21 && micro >= 2) || minor === 22) return { name: 'xdg-desktop-portal 1.21.2–1.22.x', selection: 'cascade', portalSearchPath: true };
  return undefined;
}

class Unsure extends Error {}

interface Impl {
  source: string;
  file: string;
  dbusName: string;
  interfaces: string[];
  useIn: string[] | undefined;
}

interface PortalConfig {
  file: string;
  interfaces: Map<string, string[]>;
  fallback: string[] | undefined;
}

/** g_dbus_is_name: a unique name or a well-known name. */
export function isBusName(name: string): boolean {
  if (name.length === 0 || name.length > 255) return false;
  if (name.startsWith(':')) return /^:[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/.test(name);
  return /^[A-Za-z_-][A-Za-z0-9_-]*(\.[A-Za-z_-][A-Za-z0-9_-]*)+$/.test(name);
}

/** g_dbus_is_interface_name */
export function isInterfaceName(name: string): boolean {
  return name.length <= 255 && /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$/.test(name);
}

const asciiLower = (s: string) => s.replace(/[A-Z]/g, (c) => c.toLowerCase());
/** g_ascii_strcasecmp(...) == 0 */
const caseEq = (a: string, b: string) => asciiLower(a) === asciiLower(b);
/** strcmp on the UTF-8 bytes */
const strcmp = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** XDG_CURRENT_DESKTOP as each version splits it: 1.16 takes it raw; later ones keep valid names only, lowercased. */
function desktopsOf(env: FrontendFacts['env'], rules: Rules): string[] {
  const value = env.XDG_CURRENT_DESKTOP ?? '';
  const parts = value === '' ? [] : value.split(':'); // g_strsplit("", ...) is empty
  if (rules.selection === 'use-in-then-any') return parts;
  return parts.filter((d) => /^[A-Za-z0-9_-]+$/.test(d)).map(asciiLower);
}

/** What a key file holds, or null if it is not there to read (the frontend skips it too). A file GLib might read differently than we do makes us unsure. */
function readKeyFile(file: string, consulted: string[]): KeyFile | null {
  let data: Buffer;
  try {
    data = readFileSync(file);
  } catch {
    return null;
  }
  consulted.push(file);
  try {
    return parseKeyFile(data);
  } catch (err) {
    if (err instanceof KeyFileError) throw new Unsure(`${file} does not parse (${err.message}); the frontend would not read it either, but we cannot be sure what it made of it`);
    throw err;
  }
}

/** register_portal(): a .portal file the frontend accepts, or undefined where it logs "Error loading" and skips it. */
function loadPortal(file: string, rules: Rules, consulted: string[]): Impl | undefined {
  const kf = readKeyFile(file, consulted);
  const portal = kf?.get('portal');
  if (!portal) return undefined;
  const base = path.basename(file);
  // 1.16 names a backend by its file name; later releases drop the extension.
  const source = rules.selection === 'use-in-then-any' ? base : base.slice(0, base.lastIndexOf('.'));
  try {
    const rawName = portal.get('DBusName');
    const rawIfaces = portal.get('Interfaces');
    if (rawName === undefined || rawIfaces === undefined) return undefined;
    const dbusName = stringValue(rawName);
    if (!isBusName(dbusName)) return undefined;
    const interfaces = stringList(rawIfaces);
    if (!interfaces.every((i) => isInterfaceName(i) && i.startsWith('org.freedesktop.impl.portal.'))) return undefined;
    const rawUseIn = portal.get('UseIn');
    let useIn: string[] | undefined;
    if (rules.selection === 'use-in-then-any') {
      // 1.16 requires UseIn.
      if (rawUseIn === undefined) return undefined;
      useIn = stringList(rawUseIn);
    } else {
      try {
        useIn = rawUseIn === undefined ? undefined : stringList(rawUseIn);
      } catch {
        useIn = undefined;
      }
    }
    return { source, file, dbusName, interfaces, useIn };
  } catch (err) {
    if (err instanceof KeyFileError) return undefined;
    throw err;
  }
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function listPortalFiles(dir: string, consulted: string[]): string[] {
  try {
    const names = readdirSync(dir).filter((n) => n.endsWith('.portal'));
    consulted.push(dir);
    return names.map((n) => path.join(dir, n));
  } catch {
    return [];
  }
}

/** An absolute directory from the environment, or the default; a relative one would depend on the frontend's working directory. */
function absolute(value: string, what: string): string {
  if (!path.isAbsolute(value)) throw new Unsure(`${what} is "${value}", not an absolute path`);
  return value;
}

function home(env: FrontendFacts['env']): string {
  if (!env.HOME) throw new Unsure('the frontend has no HOME');
  return absolute(env.HOME, 'HOME');
}

/** g_get_user_data_dir, g_get_user_config_dir, g_get_system_data_dirs, g_get_system_config_dirs */
function userDir(env: FrontendFacts['env'], name: 'XDG_DATA_HOME' | 'XDG_CONFIG_HOME'): string {
  const v = env[name];
  if (v) return absolute(v, name);
  return path.join(home(env), name === 'XDG_DATA_HOME' ? '.local/share' : '.config');
}

function systemDirs(env: FrontendFacts['env'], name: 'XDG_DATA_DIRS' | 'XDG_CONFIG_DIRS'): string[] {
  const v = env[name] || (name === 'XDG_DATA_DIRS' ? '/usr/local/share/:/usr/share/' : '/etc/xdg');
  return v.split(':').map((d) => absolute(d, name));
}

const SUBDIR = 'xdg-desktop-portal';

function portalDirs(facts: FrontendFacts, rules: Rules): string[] {
  const override = facts.env.XDG_DESKTOP_PORTAL_DIR;
  if (override !== undefined) return [absolute(override, 'XDG_DESKTOP_PORTAL_DIR')];
  const datadir = path.join(facts.datadir, SUBDIR, 'portals');
  if (!rules.portalSearchPath) return [datadir];
  return [path.join(userDir(facts.env, 'XDG_DATA_HOME'), SUBDIR, 'portals'), ...systemDirs(facts.env, 'XDG_DATA_DIRS').map((d) => path.join(d, SUBDIR, 'portals')), datadir];
}

function loadImplementations(facts: FrontendFacts, rules: Rules, desktops: string[], consulted: string[]): Impl[] {
  const bySource = new Map<string, Impl>();
  for (const dir of portalDirs(facts, rules)) {
    for (const file of listPortalFiles(dir, consulted)) {
      const impl = loadPortal(file, rules, consulted);
      // With a search path, the first directory to offer a name wins.
      if (impl && !bySource.has(impl.source)) bySource.set(impl.source, impl);
    }
  }
  // sort_impl_by_use_in_and_name: the first desktop a backend is meant for ranks it, then the name.
  return [...bySource.values()].sort((a, b) => {
    for (const d of desktops) {
      const ua = a.useIn?.some((u) => caseEq(u, d)) ?? false;
      const ub = b.useIn?.some((u) => caseEq(u, d)) ?? false;
      if (ua !== ub) return ua ? -1 : 1;
      if (ua) break;
    }
    return strcmp(a.source, b.source);
  });
}

function loadConfig(file: string, consulted: string[]): PortalConfig | null {
  const kf = readKeyFile(file, consulted);
  const preferred = kf?.get('preferred');
  if (!preferred) return null;
  const config: PortalConfig = { file, interfaces: new Map(), fallback: undefined };
  try {
    for (const [key, raw] of preferred) {
      if (key === 'default') config.fallback ??= stringList(raw);
      else config.interfaces.set(key, stringList(raw));
    }
  } catch (err) {
    // "Invalid portals for interface": the frontend drops the whole file.
    if (err instanceof KeyFileError) return null;
    throw err;
  }
  return config;
}

/** The configuration files in search order, one per directory (`<desktop>-portals.conf` before `portals.conf`). */
function loadConfigs(facts: FrontendFacts, desktops: string[], consulted: string[], all: boolean): PortalConfig[] {
  const override = facts.env.XDG_DESKTOP_PORTAL_DIR;
  const dirs =
    override !== undefined
      ? [absolute(override, 'XDG_DESKTOP_PORTAL_DIR')]
      : [
          path.join(userDir(facts.env, 'XDG_CONFIG_HOME'), SUBDIR),
          ...systemDirs(facts.env, 'XDG_CONFIG_DIRS').map((d) => path.join(d, SUBDIR)),
          path.join(facts.sysconfdir, SUBDIR),
          path.join(userDir(facts.env, 'XDG_DATA_HOME'), SUBDIR),
          ...systemDirs(facts.env, 'XDG_DATA_DIRS').map((d) => path.join(d, SUBDIR)),
          path.join(facts.datadir, SUBDIR),
        ];
  const configs: PortalConfig[] = [];
  for (const dir of dirs) {
    if (isDirectory(dir)) consulted.push(dir);
    let found: PortalConfig | null = null;
    for (const name of [...desktops.map((d) => `${d}-portals.conf`), 'portals.conf']) {
      found = loadConfig(path.join(dir, name), consulted);
      if (found) break;
    }
    if (!found) continue;
    configs.push(found);
    if (!all) break;
  }
  return configs;
}

function prefersNone(config: PortalConfig, iface: string): boolean {
  const listed = config.interfaces.get(iface);
  return (listed ?? config.fallback ?? []).includes('none');
}

function select(iface: string, impls: Impl[], configs: PortalConfig[], desktops: string[], rules: Rules): { impl: Impl; how: string } | { none: string } | undefined {
  const supports = (i: Impl) => i.interfaces.includes(iface);
  const any = () => impls.find(supports);
  const byName = (name: string) => impls.find((i) => i.source === name);
  /** The first listed backend that exists and offers the interface; "*" is the first that offers it. */
  const firstListed = (names: string[] | undefined, starIface: string): Impl | null | undefined => {
    for (const name of names ?? []) {
      if (name === '*') return impls.find((i) => i.interfaces.includes(starIface)) ?? null;
      const impl = byName(name);
      if (impl && supports(impl)) return impl;
    }
    return undefined;
  };

  if (rules.selection === 'use-in-then-any') {
    for (const d of desktops) {
      const impl = impls.find((i) => supports(i) && i.useIn!.some((u) => caseEq(u, d)));
      if (impl) return { impl, how: `its UseIn names "${d}" of XDG_CURRENT_DESKTOP` };
    }
    const impl = any();
    return impl ? { impl, how: 'no backend names this desktop in UseIn, and 1.16 then takes the first that offers it' } : undefined;
  }

  for (const config of configs) {
    if (prefersNone(config, iface)) return { none: `${config.file} sets it to "none"` };
    if (rules.selection === 'sorted-match') {
      // 1.18.4: the first backend in sorted order that the file lists (or "*"), not the file's own order.
      const names = config.interfaces.get(iface) ?? config.fallback;
      const impl = names && impls.find((i) => supports(i) && (names.includes(i.source) || names.includes('*')));
      if (impl) return { impl, how: `${config.file} lists it` };
      continue;
    }
    const listed = firstListed(config.interfaces.get(iface), iface);
    if (listed) return { impl: listed, how: `${config.file} lists it for ${iface}` };
    // Up to 1.20, "default=*" asks for a backend of the interface "default", which none offers.
    const fallback = firstListed(config.fallback, rules.selection === 'first-listed' ? 'default' : iface);
    if (fallback) return { impl: fallback, how: `${config.file} lists it as the default` };
  }

  for (const d of desktops) {
    const impl = impls.find((i) => supports(i) && i.useIn?.some((u) => caseEq(u, d)));
    if (impl) return { impl, how: `no portals.conf decides, and its UseIn names "${d}" of XDG_CURRENT_DESKTOP` };
  }
  const gtk = impls.find((i) => i.dbusName === 'org.freedesktop.impl.portal.desktop.gtk' && supports(i));
  return gtk ? { impl: gtk, how: 'nothing else decides, and the frontend then falls back to the GTK backend' } : undefined;
}

/**
 * Changes the frontend cannot have seen: it read its files when it started.
 * A file added to or removed from a directory shows in the directory's mtime.
 */
function changedSinceStart(consulted: string[], startedAtMs: number | undefined): string | undefined {
  if (startedAtMs === undefined) return undefined;
  for (const p of consulted) {
    try {
      // /proc's clock has 10 ms ticks; a file written that close to the start is ambiguous.
      if (statSync(p).mtimeMs > startedAtMs - 50) return p;
    } catch {
      return p;
    }
  }
  return undefined;
}

/** The backend the frontend described by `facts` uses for `iface`. Pure apart from reading the files it names. */
export function chooseBackend(iface: string, facts: FrontendFacts): BackendChoice {
  const rules = rulesFor(facts.version);
  if (!rules) return { kind: 'unsure', why: `xdg-desktop-portal ${facts.version}: how this version picks backends has not been checked against its source` };
  const consulted: string[] = [];
  try {
    const desktops = desktopsOf(facts.env, rules);
    const impls = loadImplementations(facts, rules, desktops, consulted);
    const configs = rules.selection === 'use-in-then-any' ? [] : loadConfigs(facts, desktops, consulted, rules.selection === 'cascade');
    const picked = select(iface, impls, configs, desktops, rules);
    const changed = changedSinceStart(consulted, facts.startedAtMs);
    if (changed) return { kind: 'unsure', why: `${changed} changed after the frontend started, so it has not seen it` };
    if (!picked) return { kind: 'unsure', why: `no installed backend offers ${iface}` };
    if ('none' in picked) return { kind: 'unsure', why: `${iface} is disabled: ${picked.none}` };
    return { kind: 'backend', dbusName: picked.impl.dbusName, portalFile: picked.impl.file, rules: rules.name, how: picked.how };
  } catch (err) {
    if (err instanceof Unsure) return { kind: 'unsure', why: err.message };
    throw err;
  }
}

/** /proc/<pid>/environ */
export function parseEnviron(data: Buffer | string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of data.toString().split('\0')) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

/** ${datadir} and ${sysconfdir} of a frontend binary, for the layouts distributions use (/usr prefix). */
export function installDirsOf(exe: string): { datadir: string; sysconfdir: string } | undefined {
  // Debian, Fedora and openSUSE use libexec; Arch puts it in /usr/lib.
  if (exe === '/usr/libexec/xdg-desktop-portal' || exe === '/usr/lib/xdg-desktop-portal') {
    return { datadir: '/usr/share', sysconfdir: '/etc' };
  }
  return undefined;
}

/** When a process started, in ms since the epoch, from /proc (10 ms ticks). */
function startedAt(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name may hold spaces and parentheses: fields count from the last ")".
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[19]);
  const uptimeS = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
  const bootMs = Date.now() - uptimeS * 1000;
  return bootMs + ticks * 10;
}

/**
 * What decides the running frontend's choice: its version, environment and
 * install prefix, read from /proc for the process that owns its bus name.
 */
export async function describeFrontend(bus: Bus, owner: string): Promise<FrontendFacts | { unsure: string }> {
  let pid: number;
  try {
    const [p] = await bus.call({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member: 'GetConnectionUnixProcessID',
      signature: 's',
      body: [owner],
    });
    pid = Number(p);
  } catch (err) {
    return { unsure: `the bus does not say which process the frontend is (${(err as Error).message})` };
  }
  let exe: string;
  let env: Record<string, string>;
  let started: number;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
    env = parseEnviron(readFileSync(`/proc/${pid}/environ`));
    started = startedAt(pid);
  } catch (err) {
    // Another pid namespace, or hidepid: the pid is not one we can look at.
    return { unsure: `cannot read the frontend's process ${pid} (${(err as Error).message})` };
  }
  if (path.basename(exe) !== 'xdg-desktop-portal') return { unsure: `process ${pid} owning the portal name runs ${exe}, not xdg-desktop-portal` };
  const dirs = installDirsOf(exe);
  if (!dirs) return { unsure: `the frontend runs from ${exe}, an install prefix whose data and config directories we do not know` };
  let version: string | undefined;
  try {
    const { stdout } = await runProgram(exe, ['--version'], { timeoutMs: 10_000 });
    version = /(\d+\.\d+\.\d+)/.exec(stdout)?.[1];
  } catch (err) {
    return { unsure: `${exe} --version failed (${(err as Error).message})` };
  }
  if (!version) return { unsure: `${exe} --version printed no version` };
  return { version, env, ...dirs, startedAtMs: started };
}
