#!/usr/bin/env node
// Builds the AF_VSOCK addon (native/vsock) with node-gyp.  Run as the
// package's install script: `node native/build.mjs`.
//
// The addon is required at run time, so a failed build is a failed install:
// exit non-zero and say which Debian packages are missing.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..');
const addonDir = join(here, 'vsock');
const output = join(addonDir, 'build', 'Release', 'vsock.node');
const DEBIAN_HINT = 'Install the toolchain with: apt-get install build-essential python3';

function say(message) {
  console.log(`[vsock-build] ${message}`);
}

function fail(message) {
  console.error(`[vsock-build] error: ${message}`);
  process.exit(1);
}

/** True if `cmd --version` runs; a missing binary gives ENOENT. */
function runs(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.error === undefined && r.status === 0;
}

/** node-gyp honours CC/CXX/PYTHON, so check what it will actually use. */
function checkToolchain() {
  const tools = [
    { what: 'C compiler', cmd: process.env.CC ?? 'cc', pkg: 'build-essential' },
    { what: 'C++ compiler (node-gyp links with it)', cmd: process.env.CXX ?? 'c++', pkg: 'build-essential' },
    { what: 'make', cmd: 'make', pkg: 'build-essential' },
    {
      what: 'python3 (node-gyp runs gyp with it)',
      cmd: process.env.PYTHON ?? process.env.npm_config_python ?? 'python3',
      pkg: 'python3',
    },
  ];
  const missing = tools.filter((t) => !runs(t.cmd.split(' ')[0]));
  if (missing.length === 0) return;
  const list = missing.map((t) => `${t.what} [${t.cmd}] from Debian package ${t.pkg}`).join('; ');
  fail(`cannot build the AF_VSOCK addon, missing: ${list}. ${DEBIAN_HINT}`);
}

/** Prefer npm's own node-gyp during `npm install`, then ours, then PATH. */
function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  try {
    const require = createRequire(join(root, 'package.json'));
    candidates.push(join(dirname(require.resolve('node-gyp/package.json')), 'bin', 'node-gyp.js'));
  } catch {
    // Not a dependency here; fall through to npm's bundled copy.
  }
  const prefix = resolve(dirname(process.execPath), '..');
  candidates.push(join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  candidates.push(join(prefix, 'share', 'nodejs', 'node-gyp', 'bin', 'node-gyp.js'));
  const script = candidates.find((c) => existsSync(c));
  if (script) return { cmd: process.execPath, args: [script] };
  if (runs('node-gyp')) return { cmd: 'node-gyp', args: [] };
  return fail(`node-gyp not found (looked in: ${candidates.join(', ')} and PATH). It ships with npm; reinstall npm or run npm install.`);
}

/** Distro Node installs headers under <prefix>/include/node; using them avoids
 * node-gyp downloading headers, which is impossible offline. */
function nodedirArgs() {
  if (process.env.npm_config_nodedir) return [];
  const prefix = resolve(dirname(process.execPath), '..');
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) return [`--nodedir=${prefix}`];
  return [];
}

function build() {
  if (process.platform !== 'linux') {
    say(`skipping: AF_VSOCK exists only on Linux (this is ${process.platform})`);
    return;
  }
  checkToolchain();
  const gyp = findNodeGyp();
  const args = [...gyp.args, 'rebuild', ...nodedirArgs()];
  say(`building ${addonDir}`);
  say(`running: ${[gyp.cmd, ...args].join(' ')}`);
  const r = spawnSync(gyp.cmd, args, { cwd: addonDir, stdio: 'inherit' });
  if (r.error) fail(`could not run node-gyp: ${r.error.message}`);
  if (r.status !== 0) {
    fail(
      `node-gyp rebuild failed (exit ${r.status ?? r.signal}). ${DEBIAN_HINT}; ` +
        'Node headers must be available (distro package or nodedir=<prefix> in .npmrc)',
    );
  }
  verify();
}

/** A .node that builds but cannot load (ABI or symbol trouble) should fail the install, not the first use. */
function verify() {
  if (!existsSync(output)) fail(`node-gyp reported success but ${output} does not exist`);
  try {
    const addon = createRequire(import.meta.url)(output);
    if (typeof addon.probe !== 'function') fail(`${output} loaded but does not export probe()`);
  } catch (err) {
    fail(`${output} was built but does not load: ${err instanceof Error ? err.message : String(err)}`);
  }
  say(`built ${output} (loads OK)`);
}

build();
