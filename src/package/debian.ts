import { createHash } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';
import { renderDataFile } from '../data-files.js';
import { DEPENDENCIES } from '../deps.js';
import { configSkeleton, HOST_DBUS_SERVICE, HOST_UNIT } from '../host/install.js';
import { runProgram } from '../exec.js';
import { packageRoot } from '../paths.js';
import { helpToMan } from './man.js';
import { COMMAND, GENERATED_LIST, GUEST_PACKAGE, INSTALL_GUEST_MANIFEST, PACKAGE_MARK, PACKAGE_PIN_DIR, pinTemplate, shippedGuestFiles, STATE_DIR } from './guest-files.js';

/**
 * `npm run package`: Debian packages built from the checkout with dpkg-deb,
 * no debian/ source tree. Three binary packages of one source:
 *
 * - xdg-desktop-portal-vm-common (the CPU's architecture): the xdp-vm CLI
 *   bundle, the AF_VSOCK addon, the data files, the D-Bus interface XML and
 *   the man pages; it runs on Node.js 18.20+ (Debian 12's nodejs);
 * - xdg-desktop-portal-vm-host (all): the daemon's user unit and D-Bus
 *   activation, the GJS consent dialog, the config skeleton; Node.js 20.19+;
 * - xdg-desktop-portal-vm-guest (all): the guest side install-guest writes,
 *   as package files, with a postinst for the rest.
 *
 * One package for both halves would put vm.portal and portals.conf (which
 * route every app's file dialog to the VM backend) on the host, and make a
 * Debian 12 guest need a newer Node.js than it ships.
 */
export const SOURCE = 'xdg-desktop-portal-vm';
export const COMMON_PACKAGE = `${SOURCE}-common`;
export const HOST_PACKAGE = `${SOURCE}-host`;
export { GUEST_PACKAGE };
/** Where the package root (package.json, dist/, data/, native/) lives on the installed system. */
export const LIB_DIR = `/usr/lib/${SOURCE}`;
export const GUEST_HELPER = `${LIB_DIR}/dist/package/guest-maintscript.mjs`;

/** Node.js each half needs: the guest half runs on Debian 12's 18.20; the host half needs 20.19. */
export const NODE_GUEST = '18.20';
export const NODE_HOST = '20.19';

/** The consent dialog: without it the daemon asks on its terminal, or denies; so recommended, not required. */
const HOST_RECOMMENDS = ['gjs', 'gir1.2-gtk-4.0', 'gir1.2-adw-1', 'passt'];
/** The session bus the daemon and the guest backend live on. */
const SESSION_BUS = 'default-dbus-session-bus | dbus-session-bus';

/**
 * Depends of one side, from the dependency table `xdp-vm doctor` checks
 * (src/deps.ts), less the packages every Debian system has (Essential: yes,
 * such as util-linux), which policy says not to name.
 */
export function sideDepends(side: 'host' | 'guest', isEssential: (pkg: string) => boolean = () => false): { depends: string[]; recommends: string[] } {
  const pkgs = [...new Set(DEPENDENCIES.filter((d) => d.side === side || d.side === 'both').flatMap((d) => d.debianPackage.split(/\s+/)))].filter((p) => !isEssential(p));
  const recommends = side === 'host' ? pkgs.filter((p) => HOST_RECOMMENDS.includes(p)) : [];
  return { depends: pkgs.filter((p) => !recommends.includes(p)), recommends };
}

/** Which of these packages are Essential, as this (Debian) build machine's dpkg knows them. */
export async function essentialPackages(pkgs: string[]): Promise<Set<string>> {
  const out = new Set<string>();
  for (const p of pkgs) {
    const r = await runProgram('dpkg-query', ['-W', '-f=${Essential}', p]).catch(() => undefined);
    if (r?.stdout.trim() === 'yes') out.add(p);
  }
  return out;
}

export interface BuildOptions {
  /** Where the .deb files go. */
  outDir: string;
  /** Staging trees (emptied first). */
  workDir: string;
  /** Seconds since the epoch for every timestamp (SOURCE_DATE_EPOCH); default: the last commit's. */
  epoch?: number;
  maintainer?: string;
  log?: (line: string) => void;
}

export interface BuiltPackage {
  name: string;
  version: string;
  architecture: string;
  file: string;
}

interface StagedFile {
  /** Absolute path on the installed system. */
  path: string;
  mode: number;
  content?: string | Buffer;
  from?: string;
  symlink?: string;
}

interface PackageSpec {
  name: string;
  architecture: string;
  section: string;
  depends: string[];
  recommends?: string[];
  suggests?: string[];
  synopsis: string;
  description: string;
  files: StagedFile[];
  /** Maintainer scripts and triggers, by control file name. */
  control?: Record<string, string>;
}

const ROOT = () => packageRoot();

/** Debian's version from package.json's: a pre-release 1.0.0-rc.1 sorts before 1.0.0 as 1.0.0~rc.1. */
export function debianVersion(npmVersion: string): string {
  return npmVersion.replace('-', '~');
}

/** Every .mjs the CLI entry reaches, through static and dynamic imports (the bundle folder also holds stale chunks of earlier builds). */
export function reachableBundleFiles(bundleDir: string, entry = 'xdp-vm.mjs'): string[] {
  const seen = new Set<string>();
  const visit = (rel: string) => {
    if (seen.has(rel)) return;
    seen.add(rel);
    const text = readFileSync(path.join(bundleDir, rel), 'utf8');
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*["'](\.\.?\/[^"']+\.mjs)["']/g)) visit(path.posix.normalize(path.posix.join(path.posix.dirname(rel), m[1]!)));
  };
  visit(entry);
  return [...seen].sort();
}

interface BundledPackage {
  name: string;
  version: string;
  license: string;
  copyright: string;
}

/** The npm packages esbuild put into these bundle files, read from their source maps. */
export function bundledPackages(mapFiles: string[]): BundledPackage[] {
  const dirs = new Set<string>();
  for (const map of mapFiles.filter((m) => existsSync(m))) {
    const { sources } = JSON.parse(readFileSync(map, 'utf8')) as { sources: string[] };
    for (const s of sources) {
      const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(path.resolve(path.dirname(map), s));
      if (m) dirs.add(m[1]!);
    }
  }
  return bundledPackagesFromDirs([...dirs]);
}

/** SPDX (or an old-style object) to the short names of Debian's copyright format. */
function debianLicense(spdx: unknown, text: string): string {
  const raw = typeof spdx === 'string' ? spdx : Array.isArray(spdx) ? String((spdx[0] as { type?: string })?.type ?? '') : String((spdx as { type?: string } | undefined)?.type ?? '');
  const first = raw.split(/[,\s]|OR|AND/)[0]!.replace(/[()]/g, '');
  const known: Record<string, string> = { MIT: 'Expat', ISC: 'ISC', 'Apache-2.0': 'Apache-2.0', Apache2: 'Apache-2.0', 'BlueOak-1.0.0': 'BlueOak-1.0.0', 'BSD-3-Clause': 'BSD-3-clause', 'BSD-2-Clause': 'BSD-2-clause' };
  if (known[first]) return known[first]!;
  if (/Permission is hereby granted, free of charge/.test(text)) return 'Expat';
  if (/Apache License/.test(text)) return 'Apache-2.0';
  if (/Permission to use, copy, modify, and\/or distribute/.test(text)) return 'ISC';
  throw new Error(`cannot tell the license of a bundled package (${raw || 'no license field'}); add it to src/package/debian.ts`);
}

/** The holder from a licence file's "Copyright (c) 2020 Someone" line, else package.json's author, else "the NAME authors". */
function copyrightLine(text: string, name: string, author?: unknown): string {
  const line = text
    .split('\n')
    .map((l) => l.trim())
    .find((l) => /^[Cc]opyright\s+(\([Cc]\)|©|\d{4}|[A-Z][a-z]+ [A-Z])/.test(l) && !/copyright (license|notice|holder|owner|statement)/i.test(l));
  if (line) return line.replace(/^copyright\s*(\(c\)|©)?\s*/i, '');
  const who = typeof author === 'string' ? author : (author as { name?: string } | undefined)?.name;
  return who ? who.replace(/\s*\(http[^)]*\)/, '') : `the ${name} authors`;
}

const LICENSE_TEXTS: Record<string, string> = {
  'LGPL-2.1+': `This package is free software; you can redistribute it and/or
modify it under the terms of the GNU Lesser General Public
License as published by the Free Software Foundation; either
version 2.1 of the License, or (at your option) any later version.
.
This package is distributed in the hope that it will be useful,
but WITHOUT ANY WARRANTY; without even the implied warranty of
MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the GNU
Lesser General Public License for more details.
.
On Debian systems, the complete text of the GNU Lesser General
Public License version 2.1 can be found in "/usr/share/common-licenses/LGPL-2.1".`,
  'Apache-2.0': `Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at
.
    http://www.apache.org/licenses/LICENSE-2.0
.
Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
.
On Debian systems, the complete text of the Apache License, Version 2.0
can be found in "/usr/share/common-licenses/Apache-2.0".`,
  Expat: `Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:
.
The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.
.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.`,
  ISC: `Permission to use, copy, modify, and/or distribute this software for any
purpose with or without fee is hereby granted, provided that the above
copyright notice and this permission notice appear in all copies.
.
THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF
MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR
ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN
ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF
OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.`,
};

/** The Blue Oak licence has no file in common-licenses: quote a bundled package's own copy. */
function licenseText(name: string, bundled: BundledPackage[]): string {
  if (LICENSE_TEXTS[name]) return LICENSE_TEXTS[name]!;
  const pkg = bundled.find((b) => b.license === name);
  const dir = pkg && path.join(ROOT(), 'node_modules', pkg.name);
  const file = dir && readdirSync(dir).find((f) => /^licen[cs]e/i.test(f));
  if (!file) throw new Error(`no text for license ${name}`);
  return readFileSync(path.join(dir, file), 'utf8')
    .trim()
    .split('\n')
    .map((l) => (l.trim() === '' ? '.' : l.replace(/^#+\s*/, '')))
    .join('\n');
}

/** debian/copyright (machine-readable format) for a package whose bundles hold `bundled`. */
export function copyrightFile(year: number, bundled: { where: string; packages: BundledPackage[] }[]): string {
  const all = bundled.flatMap((b) => b.packages);
  const used = ['LGPL-2.1+', ...new Set(all.map((b) => b.license))];
  const out = [
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/',
    `Upstream-Name: ${SOURCE}`,
    '',
    'Files: *',
    `Copyright: ${year} the ${SOURCE} authors`,
    'License: LGPL-2.1+',
  ];
  for (const b of bundled.filter((x) => x.packages.length)) {
    const licenses = ['LGPL-2.1+', ...new Set(b.packages.map((p) => p.license))];
    out.push(
      '',
      `Files: ${b.where}`,
      `Copyright: ${year} the ${SOURCE} authors`,
      ...[...new Set(b.packages.map((p) => p.copyright))].map((c) => ` ${c}`),
      `License: ${licenses.join(' and ')}`,
      'Comment: esbuild bundles these npm packages into these files:',
      ...b.packages.map((p) => ` ${p.name} ${p.version} (${p.license})`),
    );
  }
  for (const l of used) out.push('', `License: ${l}`, ...licenseText(l, all).split('\n').map((x) => ` ${x}`));
  return `${out.join('\n')}\n`;
}

function rfc2822(epoch: number): string {
  const d = new Date(epoch * 1000);
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][d.getUTCDay()];
  const mon = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][d.getUTCMonth()];
  const p = (n: number) => String(n).padStart(2, '0');
  return `${day}, ${p(d.getUTCDate())} ${mon} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/** A native package's changelog: one entry for this build. */
export function changelog(version: string, maintainer: string, epoch: number, commit: string | undefined): string {
  return `${SOURCE} (${version}) unstable; urgency=medium\n\n  * Built by \`npm run package\`${commit ? ` from commit ${commit}` : ''}.\n\n -- ${maintainer}  ${rfc2822(epoch)}\n`;
}

const gz = (data: string | Buffer) => gzipSync(data, { level: 9 });

async function git(args: string[]): Promise<string | undefined> {
  try {
    // Only reading the checkout's history: git's ownership check would refuse a checkout another user owns (a user building from root's clone).
    return (await runProgram('git', ['-c', `safe.directory=${ROOT()}`, '-C', ROOT(), ...args])).stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

async function cli(args: string[]): Promise<string> {
  // HOME=~ so that defaults under the user's home read as ~/... in the pages.
  const { stdout } = await runProgram(process.execPath, [path.join(ROOT(), 'dist', 'bundle', 'xdp-vm.mjs'), ...args], { env: { HOME: '~', LANG: 'C.UTF-8' } });
  return stdout;
}

/** The verbs and their one-line summaries, from `xdp-vm --help`. */
export function verbsFromHelp(help: string): { name: string; summary: string }[] {
  return help
    .split('\n')
    .map((l) => /^ {2}([a-z][a-z-]*) {2,}(\S.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => !!m)
    .map((m) => ({ name: m[1]!, summary: m[2]! }));
}

/** xdp-vm(1) and xdp-vm-VERB(1) for every verb; verbs that share one --help (install-guest, uninstall-guest) share a page, the others as symlinks. */
async function manPages(version: string, date: string): Promise<StagedFile[]> {
  const source = `xdp-vm ${version}`;
  const verbs = verbsFromHelp(await cli(['--help']));
  const dir = '/usr/share/man/man1';
  const files: StagedFile[] = [];
  const groups = new Map<string, { name: string; summary: string }[]>();
  for (const v of verbs) {
    const help = await cli([v.name, '--help']);
    groups.set(help, [...(groups.get(help) ?? []), v]);
  }
  for (const [help, group] of groups) {
    const [first, ...others] = group.map((v) => ({ ...v, page: `xdp-vm-${v.name}` }));
    files.push({ path: `${dir}/${first!.page}.1.gz`, mode: 0o644, content: gz(helpToMan({ name: first!.page, names: [first!.page, ...others.map((o) => o.page)], section: 1, summary: first!.summary, help, source, date, seeAlso: ['xdp-vm(1)'] })) });
    for (const o of others) files.push({ path: `${dir}/${o.page}.1.gz`, mode: 0o777, symlink: `${first!.page}.1.gz` });
  }
  const commands = verbs.map((v) => `.TP\n.B ${v.name}\n${v.summary}. See \\fBxdp\\-vm\\-${v.name.replace(/-/g, '\\-')}\\fR(1).`).join('\n');
  const roff = helpToMan({
    name: 'xdp-vm',
    section: 1,
    summary: 'portals for apps in virtual machines',
    help: 'Usage: xdp-vm VERB [OPTIONS]\n       xdp-vm --version\n',
    source,
    date,
    extra: [
      '.SH DESCRIPTION',
      '.PP',
      "An unmodified GTK or Qt app in a VM asks the VM's xdg-desktop-portal for a file; the",
      "host's own file dialog opens, titled with the VM's name, and the chosen host file appears",
      'inside that VM only, live and revocable. On the host, \\fBxdp\\-vm host\\fR is the daemon;',
      'in a VM, \\fBxdp\\-vm guest\\fR is the portal backend and \\fBxdp\\-vm mount\\-agent\\fR mounts',
      'the document share. Every verb takes \\fB\\-\\-help\\fR.',
      '.SH COMMANDS',
      commands,
      '.SH FILES',
      '.TP',
      '.I ~/.config/xdp-vm/config.json',
      'the host daemon\'s VM config (JSON with comments); \\fBxdp\\-vm install\\-host\\fR writes a skeleton naming every key',
      '.TP',
      '.I /etc/xdp-vm/guest.json',
      "a guest's mount point and share tag",
      '.SH EXIT STATUS',
      '0 on success, 2 for usage and config errors, 3 for a missing program, 1 otherwise.',
      '.SH SEE ALSO',
      `${verbs.map((v) => `\\fBxdp\\-vm\\-${v.name.replace(/-/g, '\\-')}\\fR(1)`).join(',\n')},`,
      `/usr/share/doc/${COMMON_PACKAGE}/README.md.gz`,
    ].join('\n'),
  });
  files.push({ path: `${dir}/xdp-vm.1.gz`, mode: 0o644, content: gz(roff) });
  return files;
}

function docFiles(pkg: string, copyright: string, changes: string, extra: StagedFile[] = []): StagedFile[] {
  return [
    { path: `/usr/share/doc/${pkg}/copyright`, mode: 0o644, content: copyright },
    { path: `/usr/share/doc/${pkg}/changelog.gz`, mode: 0o644, content: gz(changes) },
    ...extra,
  ];
}

function filesUnder(dir: string, to: string, filter: (rel: string) => boolean = () => true): StagedFile[] {
  const out: StagedFile[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      const r = path.posix.join(rel, name);
      const st = statSync(path.join(dir, r));
      if (st.isDirectory()) walk(r);
      else if (filter(r)) out.push({ path: path.posix.join(to, r), mode: 0o644, from: path.join(dir, r) });
    }
  };
  walk('');
  return out;
}

/**
 * The AF_VSOCK addon as Debian builds C: native/vsock/vsock.c with
 * dpkg-buildflags' hardening (fortify, stack protector, relro, bindnow) and
 * binding.gyp's own defines, then stripped, then loaded once to prove it.
 */
async function debianAddon(workDir: string): Promise<string> {
  const source = path.join(ROOT(), 'native', 'vsock', 'vsock.c');
  const headers = path.resolve(path.dirname(process.execPath), '..', 'include', 'node');
  if (!existsSync(path.join(headers, 'node_api.h'))) throw new Error(`Node's headers are not in ${headers}: cannot build the addon for the package`);
  const flags = async (name: string) => (await runProgram('dpkg-buildflags', ['--get', name], { env: { DEB_BUILD_MAINT_OPTIONS: 'hardening=+all' }, cwd: ROOT() })).stdout.trim().split(/\s+/).filter(Boolean);
  const out = path.join(workDir, 'vsock.node');
  const args = [
    '-std=gnu11', ...(await flags('CPPFLAGS')), ...(await flags('CFLAGS')),
    '-fPIC', '-pthread', '-Wall', '-Wextra', '-Wno-unused-parameter',
    '-D_FILE_OFFSET_BITS=64', '-D_LARGEFILE_SOURCE', '-DNODE_GYP_MODULE_NAME=vsock', '-DNAPI_VERSION=8', '-DBUILDING_NODE_EXTENSION',
    `-I${headers}`, '-shared', ...(await flags('LDFLAGS')), '-o', out, source,
  ];
  await runProgram('cc', args, { cwd: ROOT(), timeoutMs: 120_000 });
  await runProgram('strip', ['--strip-unneeded', '--remove-section=.comment', '--remove-section=.note', out]);
  await runProgram(process.execPath, ['-e', `const a = require(${JSON.stringify(out)}); if (typeof a.probe !== 'function') process.exit(1)`]);
  return out;
}

/** The `libc6 (>= …)` the addon needs, as dpkg-shlibdeps works it out. */
async function shlibDepends(elf: string, workDir: string): Promise<string[]> {
  const dir = path.join(workDir, 'shlibdeps');
  mkdirSync(path.join(dir, 'debian'), { recursive: true });
  writeFileSync(path.join(dir, 'debian', 'control'), `Source: ${SOURCE}\n\nPackage: ${COMMON_PACKAGE}\nArchitecture: any\n`);
  const { stdout } = await runProgram('dpkg-shlibdeps', ['-O', '-e', elf], { cwd: dir });
  const m = /^shlibs:Depends=(.*)$/m.exec(stdout);
  return m ? m[1]!.split(',').map((s) => s.trim()).filter(Boolean) : [];
}

/** The bundle as installed: its #! runs Debian's node directly (one argument, as Linux passes it), and no source map. */
function installedBundleFile(file: string, isEntry: boolean): Buffer {
  let text = readFileSync(file, 'utf8').replace(/\n\/\/# sourceMappingURL=\S+\s*$/, '\n');
  if (isEntry) text = text.replace(/^#!.*\n/, '#!/usr/bin/node --max-semi-space-size=4\n');
  return Buffer.from(text);
}

function fill(template: string, vars: Record<string, string>): string {
  return template.replace(/@([A-Z_]+)@/g, (m, k: string) => {
    if (vars[k] === undefined) throw new Error(`${m} has no value`);
    return vars[k]!;
  });
}

async function specs(opts: Required<Pick<BuildOptions, 'workDir'>> & { version: string; arch: string; maintainer: string; epoch: number }): Promise<PackageSpec[]> {
  const root = ROOT();
  const bundleDir = path.join(root, 'dist', 'bundle');
  if (!existsSync(path.join(bundleDir, 'xdp-vm.mjs'))) throw new Error('dist/bundle/xdp-vm.mjs is missing: run npm run build first');
  const dialogs = path.join(root, 'dist', 'dialogs');
  if (!existsSync(path.join(dialogs, 'consent', 'main.js'))) throw new Error('dist/dialogs/consent/main.js is missing: run npm run build first');
  const year = new Date(opts.epoch * 1000).getUTCFullYear();
  const date = new Date(opts.epoch * 1000).toISOString().slice(0, 10);
  const changes = changelog(opts.version, opts.maintainer, opts.epoch, await git(['rev-parse', '--short', 'HEAD']));

  const bundleFiles = reachableBundleFiles(bundleDir);
  const commonBundled = bundledPackages(bundleFiles.map((f) => path.join(bundleDir, `${f}.map`)));

  // The postinst helper: its own small bundle, for Debian 12's Node.js 18.
  const helperOut = path.join(opts.workDir, 'helper');
  const helper = await build({
    entryPoints: [path.join(root, 'src', 'package', 'guest-maintscript.ts')],
    outfile: path.join(helperOut, 'guest-maintscript.mjs'),
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: `node${NODE_GUEST.split('.')[0]}`,
    minifyWhitespace: true,
    minifySyntax: true,
    metafile: true,
    define: { __XDP_VM_PIN_TEMPLATE__: JSON.stringify(pinTemplate()) },
    logLevel: 'warning',
  });
  const helperInputs = Object.keys(helper.metafile.inputs);
  if (helperInputs.some((i) => i.includes('node_modules'))) throw new Error(`the postinst helper must use only Node's built-ins, but bundles ${helperInputs.filter((i) => i.includes('node_modules')).join(', ')}`);
  const dialogPackages = bundledPackagesFromDirs(dialogNodeModules(root));

  const addon = await debianAddon(opts.workDir);
  const common: PackageSpec = {
    name: COMMON_PACKAGE,
    architecture: opts.arch,
    section: 'misc',
    depends: [`nodejs (>= ${NODE_GUEST})`, ...(await shlibDepends(addon, opts.workDir))],
    synopsis: 'portals for apps in virtual machines - the xdp-vm command',
    description: [
      "Apps in a VM ask for files through the VM's stock xdg-desktop-portal; the",
      "host's own file dialog answers, titled with the VM's name, and the chosen",
      'host file appears inside that VM only, live and revocable.',
      '.',
      'This package holds the xdp-vm command that both sides run, with its',
      'AF_VSOCK addon, data files and manual pages. Install',
      `${HOST_PACKAGE} on the host,`,
      `and ${GUEST_PACKAGE} in each VM.`,
    ].join('\n'),
    files: [
      { path: `${LIB_DIR}/package.json`, mode: 0o644, content: `${JSON.stringify({ name: SOURCE, version: opts.version, type: 'module', private: true }, null, 2)}\n` },
      ...bundleFiles.map((f) => ({ path: `${LIB_DIR}/dist/bundle/${f}`, mode: f === 'xdp-vm.mjs' ? 0o755 : 0o644, content: installedBundleFile(path.join(bundleDir, f), f === 'xdp-vm.mjs') })),
      { path: `${LIB_DIR}/native/vsock/build/Release/vsock.node`, mode: 0o644, from: addon },
      ...filesUnder(path.join(root, 'data'), `${LIB_DIR}/data`),
      ...filesUnder(path.join(root, 'dbus-interfaces'), `${LIB_DIR}/dbus-interfaces`, (r) => r.endsWith('.xml')),
      { path: COMMAND, mode: 0o777, symlink: `../lib/${SOURCE}/dist/bundle/xdp-vm.mjs` },
      ...(await manPages(opts.version, date)),
      ...docFiles(COMMON_PACKAGE, copyrightFile(year, [{ where: `usr/lib/${SOURCE}/dist/bundle/*`, packages: commonBundled }]), changes, [
        { path: `/usr/share/doc/${COMMON_PACKAGE}/README.md.gz`, mode: 0o644, content: gz(readFileSync(path.join(root, 'README.md'))) },
      ]),
    ],
  };

  const exact = (p: string) => `${p} (= ${opts.version})`;
  const everyDep = [...new Set(DEPENDENCIES.flatMap((d) => d.debianPackage.split(/\s+/)))];
  const essential = await essentialPackages(everyDep);
  const hostDeps = sideDepends('host', (p) => essential.has(p));
  const host: PackageSpec = {
    name: HOST_PACKAGE,
    architecture: 'all',
    section: 'misc',
    depends: [exact(COMMON_PACKAGE), `nodejs (>= ${NODE_HOST})`, ...hostDeps.depends, SESSION_BUS],
    recommends: hostDeps.recommends,
    suggests: ['libvirt-clients', 'flatpak'],
    synopsis: 'portals for apps in virtual machines - host daemon',
    description: [
      'Apps in a VM ask for files through the VM\'s stock xdg-desktop-portal; this',
      "host daemon answers with the desktop's own file dialog, titled with the",
      "VM's name, and shares the chosen file into that VM only, through the",
      "user's document store and one virtiofsd per VM.",
      '.',
      'It ships the daemon\'s systemd user unit, the D-Bus activation of its bus',
      'name, the consent dialog and a config skeleton. Each user runs',
      '"xdp-vm install-host", which writes ~/.config/xdp-vm/config.json and',
      'enables the unit.',
    ].join('\n'),
    files: [
      { path: `/usr/lib/systemd/user/${HOST_UNIT}`, mode: 0o644, content: renderDataFile('xdp-vm-host.service.in', { XDP_VM: COMMAND }) },
      { path: `/usr/share/dbus-1/services/${HOST_DBUS_SERVICE}`, mode: 0o644, content: renderDataFile(`${HOST_DBUS_SERVICE}.in`, { XDP_VM: COMMAND }) },
      ...filesUnder(dialogs, `${LIB_DIR}/dist/dialogs`, (r) => !r.endsWith('.map')),
      ...docFiles(HOST_PACKAGE, copyrightFile(year, [{ where: `usr/lib/${SOURCE}/dist/dialogs/*`, packages: dialogPackages }]), changes, [
        { path: `/usr/share/doc/${HOST_PACKAGE}/examples/config.json`, mode: 0o644, content: configSkeleton() },
      ]),
    ],
  };

  const guestFiles = shippedGuestFiles();
  const etc = guestFiles.filter((f) => f.path.startsWith('/etc/'));
  const vars = {
    PACKAGE: GUEST_PACKAGE,
    INSTALL_GUEST_MANIFEST,
    HELPER: GUEST_HELPER,
    MOUNT_UNIT: 'xdp-vm-mount.service',
    GUEST_UNIT: 'xdp-vm-guest.service',
    GENERATED_LIST,
    STATE_DIR,
    PACKAGE_PIN_DIR,
    PACKAGE_MARK,
    DROP_IN_DIR: '/etc/systemd/user/xdg-desktop-portal.service.d',
  };
  const script = (name: string) => fill(readFileSync(path.join(root, 'packaging', `${GUEST_PACKAGE}.${name}`), 'utf8'), vars);
  const guest: PackageSpec = {
    name: GUEST_PACKAGE,
    architecture: 'all',
    section: 'misc',
    depends: [exact(COMMON_PACKAGE), `nodejs (>= ${NODE_GUEST})`, ...sideDepends('guest', (p) => essential.has(p)).depends.map((d) => (d === 'xdg-desktop-portal' ? 'xdg-desktop-portal (>= 1.16)' : d)), SESSION_BUS],
    synopsis: 'portals for apps in virtual machines - guest backend',
    description: [
      "Install this in a VM: it routes the apps' file dialogs (the FileChooser",
      "portal) to the host, whose own file dialog answers, titled with the VM's",
      'name; the chosen host file appears in the VM under /run/xdp-vm/doc.',
      '.',
      "It registers the VM backend with the VM's stock xdg-desktop-portal (for",
      '1.16 by a portal folder of its own, kept up to date by a trigger), and',
      'enables the agent that mounts the host\'s document share. Settings:',
      '/etc/xdp-vm/guest.json.',
    ].join('\n'),
    files: [
      ...guestFiles.map((f) => ({ path: f.path, mode: 0o644, content: f.content })),
      { path: GUEST_HELPER, mode: 0o644, from: path.join(helperOut, 'guest-maintscript.mjs') },
      // "Open on host" runs /usr/bin/xdp-vm, which the common package (a dependency) ships.
      { path: `/usr/share/lintian/overrides/${GUEST_PACKAGE}`, mode: 0o644, content: `${GUEST_PACKAGE}: desktop-command-not-in-package usr/bin/xdp-vm [usr/share/applications/xdp-vm-open-on-host.desktop]\n` },
      ...docFiles(GUEST_PACKAGE, copyrightFile(year, []), changes),
    ],
    control: {
      preinst: script('preinst'),
      postinst: script('postinst'),
      prerm: script('prerm'),
      postrm: script('postrm'),
      triggers: script('triggers'),
      conffiles: etc.map((f) => `${f.path}\n`).join(''),
    },
  };
  return [common, host, guest];
}

function bundledPackagesFromDirs(dirs: string[]): BundledPackage[] {
  return dirs
    .map((dir) => {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name: string; version: string; license?: unknown; licenses?: unknown; author?: unknown };
      // A package with an Apache and an MIT file (through, from) is read by its MIT one first.
      const names = readdirSync(dir).filter((f) => /^(licen[cs]e|copying)/i.test(f));
      const file = names.find((f) => !/apache/i.test(f)) ?? names[0];
      const text = file ? readFileSync(path.join(dir, file), 'utf8') : '';
      return { name: pkg.name, version: pkg.version, license: debianLicense(pkg.license ?? pkg.licenses, text), copyright: copyrightLine(text, pkg.name, pkg.author) };
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** The npm packages in the GJS dialog bundle: zod (the shared contract); the @girs packages are types only. */
function dialogNodeModules(root: string): string[] {
  return existsSync(path.join(root, 'node_modules', 'zod')) ? [path.join(root, 'node_modules', 'zod')] : [];
}

function installedSizeKiB(files: StagedFile[], stage: string): number {
  let total = 0;
  for (const f of files) total += f.symlink ? 1 : Math.ceil(lstatSync(path.join(stage, f.path)).size / 1024);
  return total;
}

function controlFile(spec: PackageSpec, version: string, maintainer: string, installedSize: number): string {
  const fields: [string, string | undefined][] = [
    ['Package', spec.name],
    ['Source', spec.name === SOURCE ? undefined : SOURCE],
    ['Version', version],
    ['Architecture', spec.architecture],
    ['Maintainer', maintainer],
    ['Installed-Size', String(installedSize)],
    ['Depends', spec.depends.join(', ')],
    ['Recommends', spec.recommends?.length ? spec.recommends.join(', ') : undefined],
    ['Suggests', spec.suggests?.length ? spec.suggests.join(', ') : undefined],
    ['Section', spec.section],
    ['Priority', 'optional'],
    ['Description', `${spec.synopsis}\n${spec.description.split('\n').map((l) => ` ${l}`).join('\n')}`],
  ];
  return `${fields.filter(([, v]) => v !== undefined).map(([k, v]) => `${k}: ${v}`).join('\n')}\n`;
}

async function stageAndBuild(spec: PackageSpec, opts: { workDir: string; outDir: string; version: string; maintainer: string; epoch: number }): Promise<BuiltPackage> {
  const stage = path.join(opts.workDir, spec.name);
  rmSync(stage, { recursive: true, force: true });
  const dirs = new Set<string>();
  const md5: string[] = [];
  for (const f of spec.files) {
    const target = path.join(stage, f.path);
    for (let d = path.dirname(f.path); d !== '/'; d = path.dirname(d)) dirs.add(d);
    mkdirSync(path.dirname(target), { recursive: true });
    if (f.symlink) {
      symlinkSync(f.symlink, target);
      continue;
    }
    const data = f.content !== undefined ? Buffer.from(f.content) : readFileSync(f.from!);
    writeFileSync(target, data);
    chmodSync(target, f.mode);
    md5.push(`${createHash('md5').update(data).digest('hex')}  ${f.path.slice(1)}`);
  }
  const debian = path.join(stage, 'DEBIAN');
  mkdirSync(debian);
  for (const [name, text] of Object.entries(spec.control ?? {})) {
    writeFileSync(path.join(debian, name), text);
    chmodSync(path.join(debian, name), ['preinst', 'postinst', 'prerm', 'postrm'].includes(name) ? 0o755 : 0o644);
  }
  writeFileSync(path.join(debian, 'md5sums'), `${md5.sort((a, b) => a.slice(34).localeCompare(b.slice(34))).join('\n')}\n`);
  const size = installedSizeKiB(spec.files, stage) + dirs.size;
  writeFileSync(path.join(debian, 'control'), controlFile(spec, opts.version, opts.maintainer, size));
  for (const d of [...dirs, '/DEBIAN']) chmodSync(path.join(stage, d), 0o755);
  chmodSync(stage, 0o755);
  for (const name of readdirSync(debian)) chmodSync(path.join(debian, name), ['preinst', 'postinst', 'prerm', 'postrm'].includes(name) ? 0o755 : 0o644);
  // Every timestamp the same, so a rebuild of the same tree is the same .deb.
  const when = new Date(opts.epoch * 1000);
  const touch = (p: string) => {
    if (!lstatSync(p).isSymbolicLink()) utimesSync(p, when, when);
  };
  const walk = (p: string) => {
    touch(p);
    if (lstatSync(p).isDirectory()) for (const n of readdirSync(p)) walk(path.join(p, n));
  };
  walk(stage);
  mkdirSync(opts.outDir, { recursive: true });
  const file = path.join(opts.outDir, `${spec.name}_${opts.version}_${spec.architecture}.deb`);
  rmSync(file, { force: true });
  await runProgram('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', stage, file], { env: { SOURCE_DATE_EPOCH: String(opts.epoch) }, timeoutMs: 300_000 });
  return { name: spec.name, version: opts.version, architecture: spec.architecture, file };
}

export async function buildDebianPackages(opts: BuildOptions): Promise<BuiltPackage[]> {
  const log = opts.log ?? console.log;
  const root = ROOT();
  const npm = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string; author?: string };
  const version = debianVersion(npm.version);
  const epoch = opts.epoch ?? (Number(process.env.SOURCE_DATE_EPOCH) || Number(await git(['log', '-1', '--format=%ct'])) || Math.floor(Date.now() / 1000));
  const maintainer =
    opts.maintainer ??
    process.env.DEB_MAINTAINER ??
    (typeof npm.author === 'string' ? npm.author : undefined) ??
    (await git(['log', '-1', '--format=%an <%ae>'])) ??
    `${SOURCE} authors <${SOURCE}@localhost>`;
  const arch = (await runProgram('dpkg', ['--print-architecture'])).stdout.trim();
  rmSync(opts.workDir, { recursive: true, force: true });
  mkdirSync(opts.workDir, { recursive: true });
  const built: BuiltPackage[] = [];
  for (const spec of await specs({ workDir: opts.workDir, version, arch, maintainer, epoch })) {
    const b = await stageAndBuild(spec, { workDir: opts.workDir, outDir: opts.outDir, version, maintainer, epoch });
    log(`package: ${path.relative(process.cwd(), b.file) || b.file}`);
    built.push(b);
  }
  return built;
}
