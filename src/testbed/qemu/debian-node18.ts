import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { requireProgram } from '../../deps.js';
import { runProgram } from '../../exec.js';
import { packageRoot } from '../../paths.js';
import { currentKernelPackage, ensureKernel } from './kernel.js';
import { defaultCacheDir, resolveModuleGroups } from './guest-image.js';

/**
 * Debian 12's own `nodejs` 18 for an e2e guest, without installing it on the
 * host (where it would replace the host's /usr/bin/node): its .debs are
 * fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
 * `.cache/node18/root`, which the guest sees because it sees the checkout.
 *
 * Debian's node 18 looks for some of its builtins at fixed paths under
 * /usr/share/nodejs (acorn, cjs-module-lexer, undici), and for libnode.so.108
 * and libcares.so.2 in the system library folder, so the guest lays the
 * unpacked /usr over its own (read-only overlayfs, lower layers only): the
 * guest then looks like a Debian 12 machine after `apt-get install nodejs`,
 * with Debian's node 18 at /usr/bin/node.
 */

export interface DebPackage {
  package: string;
  version: string;
  architecture: string;
  file: string;
  sha256: string;
}

export interface DebianNode18 {
  /** The unpacked packages, laid out as /. */
  root: string;
  /** `process.version` of that node, e.g. v18.20.4. */
  nodeVersion: string;
  /** What was unpacked: nodejs and every dependency this host lacks. */
  packages: DebPackage[];
}

export function node18CacheDir(): string {
  return process.env.XDP_VM_NODE18_CACHE ?? path.join(packageRoot(), '.cache', 'node18');
}

/** Bump when the layout of the cache changes. */
const LAYOUT = 1;
const MANIFEST = 'manifest.json';

/** The newest nodejs 18.x apt knows of (Debian 12's), or undefined when the sources have none. */
export async function debianNode18Version(): Promise<string | undefined> {
  const { stdout } = await runProgram('apt-cache', ['madison', 'nodejs']);
  // "   nodejs | 18.20.4+dfsg-1~deb12u3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages", newest first.
  const versions = stdout
    .split('\n')
    .map((l) => l.split('|').map((f) => f.trim()))
    .filter((f) => f[0] === 'nodejs' && /^18\./.test(f[1] ?? '') && !/nodesource/.test(f[1] ?? ''))
    .map((f) => f[1]!);
  return versions[0];
}

/** Fetch and unpack Debian's nodejs 18 and what it needs (unless cached); no network when cached. */
export async function ensureDebianNode18(cacheDir = node18CacheDir()): Promise<DebianNode18> {
  const cached = readCache(cacheDir);
  if (cached) return cached;
  const version = await debianNode18Version();
  if (!version) throw new Error("apt knows no nodejs 18.x (Debian 12's is 18.20.4+dfsg-1~deb12u*): this host's apt sources are not Debian 12's, or run 'apt-get update'");
  const staging = `${cacheDir}.tmp-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(path.join(staging, 'debs'), { recursive: true });
  try {
    const packages = await downloadClosure(path.join(staging, 'debs'), version);
    const root = path.join(staging, 'root');
    mkdirSync(root);
    for (const p of packages) await runProgram('dpkg-deb', ['-x', path.join(staging, 'debs', p.file), root], { timeoutMs: 120_000 });
    const nodeVersion = (await runUnpackedNode(root, ['--version'])).trim();
    if (!/^v18\./.test(nodeVersion)) throw new Error(`the unpacked nodejs ${version} says it is ${nodeVersion}`);
    writeFileSync(path.join(staging, MANIFEST), `${JSON.stringify({ layout: LAYOUT, nodeVersion, packages }, null, 2)}\n`);
    mkdirSync(path.dirname(cacheDir), { recursive: true });
    rmSync(cacheDir, { recursive: true, force: true });
    try {
      renameSync(staging, cacheDir);
    } catch (err) {
      if (!readCache(cacheDir)) throw err; // another process won the race; theirs is as good
    }
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  const done = readCache(cacheDir);
  if (!done) throw new Error(`${cacheDir}: unpacked nodejs 18 is incomplete`);
  return done;
}

/** The unpacked node 18 if the cache has it (no apt, no network). */
export function cachedDebianNode18(cacheDir = node18CacheDir()): DebianNode18 | undefined {
  return readCache(cacheDir);
}

function readCache(cacheDir: string): DebianNode18 | undefined {
  try {
    const m = JSON.parse(readFileSync(path.join(cacheDir, MANIFEST), 'utf8')) as { layout: number; nodeVersion: string; packages: DebPackage[] };
    const root = path.join(cacheDir, 'root');
    if (m.layout !== LAYOUT || !existsSync(path.join(root, 'usr', 'bin', 'node'))) return undefined;
    return { root, nodeVersion: m.nodeVersion, packages: m.packages };
  } catch {
    return undefined;
  }
}

/** The unpacked node run on the host with its own libraries; only for what needs no builtins (`--version`). */
async function runUnpackedNode(root: string, args: string[]): Promise<string> {
  const lib = path.join(root, 'usr', 'lib', 'x86_64-linux-gnu');
  const { stdout } = await runProgram(path.join(root, 'usr', 'bin', 'node'), args, { env: { LD_LIBRARY_PATH: lib } });
  return stdout;
}

interface Wanted {
  name: string;
  /** `name=version`, or the bare name for apt's candidate. */
  spec: string;
}

/**
 * nodejs=<version> and, level by level, every package its Depends name that
 * neither this host has (installed, in a version that satisfies it) nor the
 * set already holds (by name or Provides). The guest's / is this host's, so
 * what the host has installed is what the guest has.
 */
async function downloadClosure(dir: string, nodeVersion: string): Promise<DebPackage[]> {
  const got: DebPackage[] = [];
  const provided = new Map<string, string>(); // name -> version, for Package and Provides of what we have
  let wanted: Wanted[] = [{ name: 'nodejs', spec: `nodejs=${nodeVersion}` }];
  for (let depth = 0; wanted.length > 0; depth++) {
    if (depth > 10) throw new Error(`nodejs ${nodeVersion}: dependency chain deeper than 10: ${wanted.map((w) => w.name).join(' ')}`);
    const before = new Set(readdirSync(dir));
    // apt-get warns when it downloads as root into a directory _apt cannot read; harmless.
    await runProgram('apt-get', ['download', ...wanted.map((w) => w.spec)], { cwd: dir, timeoutMs: 300_000 });
    const fresh = readdirSync(dir).filter((f) => f.endsWith('.deb') && !before.has(f));
    const next: Wanted[] = [];
    const control: { deb: DebPackage; depends: string }[] = [];
    for (const file of fresh) {
      const fields = await debFields(path.join(dir, file), ['Package', 'Version', 'Architecture', 'Depends', 'Pre-Depends', 'Provides']);
      const deb: DebPackage = {
        package: fields.Package!,
        version: fields.Version!,
        architecture: fields.Architecture!,
        file,
        sha256: createHash('sha256').update(readFileSync(path.join(dir, file))).digest('hex'),
      };
      got.push(deb);
      provided.set(deb.package, deb.version);
      for (const p of splitList(fields.Provides)) provided.set(p.name, p.version ?? deb.version);
      control.push({ deb, depends: [fields['Pre-Depends'], fields.Depends].filter(Boolean).join(', ') });
    }
    for (const { depends } of control) {
      for (const group of depends.split(',').map((g) => g.trim()).filter(Boolean)) {
        const alternatives = group.split('|').map(parseRelation);
        if (alternatives.some((a) => provided.has(a.name))) continue;
        if (await someInstalled(alternatives)) continue;
        const first = alternatives[0]!;
        if (!next.some((w) => w.name === first.name)) next.push({ name: first.name, spec: first.name });
      }
    }
    wanted = next;
  }
  return got.sort((a, b) => a.package.localeCompare(b.package));
}

interface Relation {
  name: string;
  op?: string;
  version?: string;
}

/** `libuv1 (>= 1.44.1)`, `nodejs:any`, `node-streamsearch (= 1.1.0)`. */
function parseRelation(text: string): Relation {
  const m = /^\s*([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\s*(?:\(\s*(<<|<=|=|>=|>>)\s*([^)\s]+)\s*\))?/.exec(text);
  if (!m) throw new Error(`cannot parse the dependency "${text}"`);
  return { name: m[1]!, op: m[2], version: m[3] };
}

function splitList(field: string | undefined): Relation[] {
  return (field ?? '').split(',').map((s) => s.trim()).filter(Boolean).map(parseRelation);
}

async function someInstalled(alternatives: Relation[]): Promise<boolean> {
  for (const a of alternatives) {
    let installed: string;
    try {
      const { stdout } = await runProgram('dpkg-query', ['-W', '-f', '${db:Status-Status} ${Version}', a.name]);
      const [status, version] = stdout.trim().split(' ');
      if (status !== 'installed' || !version) continue;
      installed = version;
    } catch {
      continue; // not known to dpkg at all
    }
    if (!a.op || !a.version) return true;
    const op = { '<<': 'lt', '<=': 'le', '=': 'eq', '>=': 'ge', '>>': 'gt' }[a.op]!;
    try {
      await runProgram('dpkg', ['--compare-versions', installed, op, a.version]);
      return true;
    } catch {
      // installed, but too old or too new: fetch the candidate instead
    }
  }
  return false;
}

async function debFields(deb: string, names: string[]): Promise<Record<string, string | undefined>> {
  const out: Record<string, string | undefined> = {};
  for (const name of names) {
    const { stdout } = await runProgram('dpkg-deb', ['-f', deb, name]);
    out[name] = stdout.trim() || undefined;
  }
  return out;
}

/**
 * The kernel modules overlayfs needs, decompressed (busybox insmod takes
 * plain .ko files only) into the cache, in load order. The e2e initramfs
 * loads only the harness's own groups; these are loaded by the node 18 test.
 */
export async function overlayModules(cacheDir = node18CacheDir()): Promise<string[]> {
  const kernel = await ensureKernel(defaultCacheDir(), await currentKernelPackage());
  const files = resolveModuleGroups(kernel.modulesDir, { overlay: ['overlay'] }).overlay ?? [];
  const dir = path.join(cacheDir, 'modules', kernel.version);
  mkdirSync(dir, { recursive: true });
  const out: string[] = [];
  for (const file of files) {
    const base = path.basename(file).replace(/\.(xz|zst|gz)$/, '');
    const target = path.join(dir, base);
    if (!existsSync(target)) {
      const tmpDir = `${dir}.tmp-${process.pid}`;
      rmSync(tmpDir, { recursive: true, force: true });
      mkdirSync(tmpDir);
      try {
        const copy = path.join(tmpDir, path.basename(file));
        copyFileSync(path.join(kernel.modulesDir, file), copy);
        if (file.endsWith('.ko.xz')) await runProgram(requireProgram('xz'), ['-d', '-f', copy]);
        else if (file.endsWith('.ko.zst')) await runProgram(requireProgram('zstd'), ['-d', '-f', '-q', '--rm', copy]);
        else if (file.endsWith('.ko.gz')) await runProgram('gzip', ['-d', '-f', copy]);
        else if (!file.endsWith('.ko')) throw new Error(`unknown module file type: ${file}`);
        renameSync(path.join(tmpDir, base), target);
      } finally {
        rmSync(tmpDir, { recursive: true, force: true });
      }
    }
    out.push(target);
  }
  return out;
}

/**
 * Guest shell (run as root before anything else in the guest) that makes the
 * guest a Debian 12 machine with `nodejs` 18 installed: overlayfs loaded,
 * then the unpacked /usr laid read-only over the guest's own /usr. Prints the
 * version /usr/bin/node then reports.
 */
export function node18GuestScript(n18: DebianNode18, modules: readonly string[]): string {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return [
    'set -e',
    // overlay may already be loaded (a second call, or a kernel with it built in).
    ...modules.map((m) => `grep -q '^${path.basename(m, '.ko').replaceAll('-', '_')} ' /proc/modules || busybox insmod ${q(m)}`),
    `grep -q ' /usr overlay ' /proc/mounts || mount -t overlay xdpvm-node18 -o ro,lowerdir=${q(path.join(n18.root, 'usr'))}:/usr /usr`,
    '/usr/bin/node --version',
  ].join('\n');
}
