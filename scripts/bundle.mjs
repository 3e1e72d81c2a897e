#!/usr/bin/env node
// Bundle the CLI into dist/bundle/: one entry file plus a chunk per lazily
// loaded verb. The guest backend starts by D-Bus activation, often in a VM
// without KVM whose root is shared over virtio-fs, where each of the ~900
// module files an unbundled start reads costs a round trip to the host.
import { build } from 'esbuild';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outdir = path.join(root, 'dist', 'bundle');
console.log(`bundle: src/cli/main.ts -> ${path.relative(root, outdir)}/xdp-vm.mjs`);
await build({
  entryPoints: { 'xdp-vm': path.join(root, 'src', 'cli', 'main.ts') },
  outdir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  outExtension: { '.js': '.mjs' },
  chunkNames: 'chunks/[name]-[hash]',
  sourcemap: true,
  minifyWhitespace: true,
  minifySyntax: true,
  // Optional requires of dbus-next: usocket (a native addon, used when present) and x11 (never used here).
  external: ['usocket', 'x11'],
  banner: { js: "import { createRequire as __xdpCreateRequire } from 'node:module'; const require = __xdpCreateRequire(import.meta.url);" },
  logLevel: 'warning',
});
