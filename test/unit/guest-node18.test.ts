import { readFileSync } from 'node:fs';
import path from 'node:path';
import { build, type BuildOptions, type Metafile, type Plugin } from 'esbuild';
import { beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';

/**
 * The guest half (`xdp-vm guest`, `xdp-vm mount-agent`, `xdp-vm
 * install-guest`, and the AF_VSOCK addon) must run on Debian 12's nodejs
 * 18.20. test/e2e/node18-guest.test.ts runs it there; these static checks
 * catch the usual ways of breaking that without booting a guest: syntax the
 * bundle would pass through for Node 20 that Node 18 cannot parse, and
 * calls to APIs that Node 18.20 lacks.
 */
const root = packageRoot();
const GUEST_VERBS = ['verb-guest', 'verb-mount-agent', 'verb-install-guest', 'verb-open-uri', 'verb-net'];

/** Leaves the host half out of the build: the other verbs, and each portal's host.ts. */
const guestHalfOnly: Plugin = {
  name: 'guest-half-only',
  setup(b) {
    b.onResolve({ filter: /^\.\.?\// }, (args) => {
      const target = path.relative(root, path.resolve(args.resolveDir, args.path)).replace(/\.js$/, '');
      const hostVerb = /^src\/cli\/verb-[a-z-]+$/.test(target) && !GUEST_VERBS.includes(path.basename(target));
      const hostPortal = /^portals\/[^/]+\/host$/.test(target);
      return hostVerb || hostPortal ? { path: args.path, external: true } : undefined;
    });
  },
};

/** As scripts/bundle.mjs builds the CLI, minus the host half. */
function guestBuild(target: string): BuildOptions & { write: false; metafile: true } {
  return {
    absWorkingDir: root,
    entryPoints: { 'xdp-vm': 'src/cli/main.ts' },
    outdir: path.join(root, 'dist', 'guest-node18-check'),
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target,
    outExtension: { '.js': '.mjs' },
    chunkNames: 'chunks/[name]-[hash]',
    minifyWhitespace: true,
    minifySyntax: true,
    external: ['usocket', 'x11'],
    plugins: [guestHalfOnly],
    write: false,
    metafile: true,
    logLevel: 'silent',
  };
}

/** Output texts with chunk hashes taken out, so two builds compare by content. */
function texts(files: { text: string }[]): string[] {
  return files.map((f) => f.text.replace(/-[A-Z0-9]{8}\.mjs/g, '-HASH.mjs')).sort();
}

let node20: string[];
let node18: string[];
let inputs: Metafile['inputs'];

beforeAll(async () => {
  const a = await build(guestBuild('node20'));
  const b = await build(guestBuild('node18.20'));
  node20 = texts(a.outputFiles);
  node18 = texts(b.outputFiles);
  inputs = b.metafile.inputs;
}, 60_000);

/**
 * APIs of Node or of its V8 that Node 18.20 does not have, with the release
 * that brought them. Each is matched in our own guest-half sources (comments
 * left out); options of older APIs are listed where they are easy to spot.
 */
const NEWER_THAN_18_20: [RegExp, string][] = [
  [/\bimport\.meta\.(dirname|filename)\b/, 'import.meta.dirname/filename: Node 20.11'],
  [/\.(toSorted|toReversed|toSpliced)\(/, 'Array.prototype.toSorted/toReversed/toSpliced: Node 20'],
  [/\.(isWellFormed|toWellFormed)\(/, 'String.prototype.isWellFormed/toWellFormed: Node 20'],
  [/\b(Object|Map)\.groupBy\b/, 'Object.groupBy/Map.groupBy: Node 21'],
  [/\bPromise\.(withResolvers|try)\b/, 'Promise.withResolvers: Node 22; Promise.try: Node 23'],
  [/\bArray\.fromAsync\b/, 'Array.fromAsync: Node 22'],
  // zod's z.union() and z.intersection() are not Set methods.
  [/(?<!\bz)\.(union|intersection|difference|symmetricDifference|isSubsetOf|isSupersetOf|isDisjointFrom)\(/, 'Set methods: Node 22'],
  [/\bIterator\.from\b|\bIterator\.prototype\b/, 'iterator helpers: Node 22'],
  [/\bRegExp\.escape\b|\bError\.isError\b|\bFloat16Array\b|\bMath\.sumPrecise\b/, 'Node 24 builtins'],
  [/\bAbortSignal\.any\b/, 'AbortSignal.any: Node 20.3'],
  [/\bURL\.parse\(/, 'URL.parse: Node 22.1'],
  [/\bstyleText\b|\bparseEnv\b|\bloadEnvFile\b|\bgetCallSites?\b/, 'util.styleText/parseEnv, process.loadEnvFile, util.getCallSites: Node 20.12+'],
  [/\bgetBuiltinModule\b/, 'process.getBuiltinModule: Node 20.16'],
  [/\b(glob|globSync|matchesGlob)\b\s*\(/, 'fs.glob, path.matchesGlob: Node 22'],
  [/\bopenAsBlob\b/, 'fs.openAsBlob: Node 19.8'],
  [/\bcrc32\b\s*\(/, 'zlib.crc32: Node 20.15'],
  [/\bduplexPair\b/, 'stream.duplexPair: Node 22.6'],
  [/\b(createHash|crypto)\b[^\n]*\.hash\(|\bcrypto\.hash\(/, 'crypto.hash: Node 20.12'],
  [/\ballowNegative\b/, 'util.parseArgs allowNegative: Node 20.16'],
  [/\bnew (File|CustomEvent|WebSocket|EventSource)\(|\bnavigator\./, 'File, CustomEvent, WebSocket, navigator globals: Node 20+'],
  [/\bprocess\.(finalization|features\.typescript|execve)\b/, 'process.finalization/execve: Node 22+'],
  [/\.(transfer|transferToFixedLength|resize)\(\)/, 'ArrayBuffer transfer/resize: Node 20+'],
  [/\brequire\(['"][^'"]+\.mjs['"]\)/, 'require() of an ES module: Node 20.17'],
];

function newApiHits(line: string): string[] {
  return NEWER_THAN_18_20.filter(([pattern]) => pattern.test(line)).map(([, what]) => what);
}

function withoutComments(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[\s;{}(),])\/\/.*$/gm, '$1');
}

describe('the guest half runs on Node 18.20', () => {
  it('is the guest verbs and what they load, not the host half', () => {
    const own = Object.keys(inputs).filter((f) => !f.includes('node_modules'));
    expect(own).toEqual(expect.arrayContaining(['src/cli/verb-guest.ts', 'src/cli/verb-mount-agent.ts', 'src/cli/verb-install-guest.ts', 'src/guest/backend.ts', 'src/guest/mount-agent.ts', 'portals/file-chooser/guest.ts']));
    expect(own.filter((f) => /^src\/cli\/verb-(host|vms|grants|doctor)\.ts$|^portals\/[^/]+\/host\.ts$|^src\/host\/daemon\.ts$/.test(f))).toEqual([]);
  });

  it('its bundle has no syntax newer than Node 18.20: built for node18.20 it is byte for byte the build for node20', () => {
    expect(node18.length).toBeGreaterThan(3);
    // A difference means esbuild rewrote something for Node 18 that the Node 20 bundle users run leaves as is.
    expect(node18).toEqual(node20);
  });

  it('its own sources call no API that Node 18.20 lacks', () => {
    const hits: string[] = [];
    for (const file of Object.keys(inputs).filter((f) => !f.includes('node_modules') && f.endsWith('.ts'))) {
      const lines = withoutComments(readFileSync(path.join(root, file), 'utf8')).split('\n');
      lines.forEach((line, i) => {
        for (const what of newApiHits(line)) hits.push(`${file}:${i + 1}: ${what}: ${line.trim()}`);
      });
    }
    expect(hits).toEqual([]);
  });

  it('its npm dependencies admit Node 18.20 in their engines, or are known not to need more on the guest\'s paths', () => {
    const packages = new Set(
      Object.keys(inputs)
        .filter((f) => f.includes('node_modules/'))
        .map((f) => {
          const parts = f.slice(f.lastIndexOf('node_modules/') + 'node_modules/'.length).split('/');
          return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
        }),
    );
    // thread-stream (pino's worker transport) says >=20, but the guest half logs to fd 2 synchronously
    // (src/log.ts) and never starts a transport: pino only loads the module.
    const NOT_RUN = new Set(['thread-stream']);
    const bad: string[] = [];
    for (const name of packages) {
      const engines = (JSON.parse(readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8')) as { engines?: { node?: string } }).engines?.node;
      if (engines && !NOT_RUN.has(name) && !admits18_20(engines)) bad.push(`${name}: engines.node ${engines}`);
    }
    expect(bad).toEqual([]);
  });

  it('the addon asks for N-API 8, which Node 18 (N-API 9) has, and no experimental N-API', () => {
    const gyp = readFileSync(path.join(root, 'native', 'vsock', 'binding.gyp'), 'utf8');
    const c = readFileSync(path.join(root, 'native', 'vsock', 'vsock.c'), 'utf8');
    const versions = [...gyp.matchAll(/NAPI_VERSION=(\d+)/g), ...c.matchAll(/#define NAPI_VERSION (\d+)/g)].map((m) => Number(m[1]));
    expect(versions.length).toBeGreaterThan(0);
    for (const v of versions) expect(v).toBeLessThanOrEqual(9);
    expect(c).not.toMatch(/NAPI_EXPERIMENTAL/);
  });

  it('the API patterns catch what they are for, and not what is fine on 18', () => {
    const caught = (line: string) => newApiHits(line);
    for (const bad of ['const here = import.meta.dirname;', 'xs.toSorted((a, b) => a - b)', 'Object.groupBy(xs, f)', 'const { promise, resolve } = Promise.withResolvers();', 'a.union(b)', 'AbortSignal.any([s])', "fs.glob('*.ts', cb)", 'parseArgs({ options, allowNegative: true })']) {
      expect(caught(bad), bad).not.toEqual([]);
    }
    for (const fine of ['z.union([a, b])', 'xs.findLast(f)', 'Object.hasOwn(o, k)', 'AbortSignal.timeout(5)', "fileURLToPath('file://x')", 'structuredClone(v)', 'xs.at(-1)']) {
      expect(caught(fine), fine).toEqual([]);
    }
    expect(admits18_20('^18.19.0 || >=20.5.0')).toBe(true);
    expect(admits18_20('>= 8')).toBe(true);
    expect(admits18_20('>=20')).toBe(false);
    expect(admits18_20('^18.20.0 || >=20.19.0')).toBe(true);
  });

  it('package.json engines admit Node 18.20 (the guest half) and 20.19 and later (both halves)', () => {
    const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { engines: { node: string } };
    expect(pkg.engines.node).toBe('^18.20.0 || >=20.19.0');
  });
});

/** Whether a simple npm range (`>=18`, `^18.19.0 || >=20.5.0`, `>= 8`) admits 18.20.4. */
function admits18_20(range: string): boolean {
  const v = [18, 20, 4];
  const cmp = (a: number[], b: number[]) => {
    for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
    return 0;
  };
  if (/^\s*(\*|x|)\s*$/.test(range)) return true;
  return range.split('||').some((alt) =>
    alt
      .trim()
      .replace(/(>=|<=|>|<|=|\^|~)\s+/g, '$1')
      .split(/\s+(?=[<>=^~]|\d)/)
      .filter(Boolean)
      .every((c) => {
        const m = /^(>=|<=|>|<|\^|~|=)?\s*v?(\d+)(?:\.(\d+|x|\*))?(?:\.(\d+|x|\*))?/.exec(c.trim());
        if (!m) return false;
        const want = [Number(m[2]), Number(m[3]) || 0, Number(m[4]) || 0];
        const d = cmp(v, want);
        switch (m[1]) {
          case '>=': return d >= 0;
          case '>': return d > 0;
          case '<=': return d <= 0;
          case '<': return d < 0;
          case '^': return d >= 0 && v[0] === want[0];
          case '~': return d >= 0 && v[0] === want[0] && v[1] === want[1];
          default: return m[3] === undefined ? v[0] === want[0] : d === 0;
        }
      }),
  );
}
