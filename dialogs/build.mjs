#!/usr/bin/env node
// Builds the GJS dialogs: type-checks each against its own tsconfig (the @girs types, not Node's),
// then bundles it to one ESM file that `gjs -m` runs. Bundling is what lets a dialog share the
// zod contract with the Node side: GJS cannot resolve bare package names.
//
//   node dialogs/build.mjs [--outdir DIR] [--no-typecheck]
//
// Output: DIR/dialogs/<name>/main.js, DIR defaulting to dist/.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import ts from 'typescript';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DIALOGS = ['consent'];

function parseArgs(argv) {
  const opts = { outdir: path.join(root, 'dist'), typecheck: true };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--outdir' && argv[i + 1]) opts.outdir = path.resolve(argv[++i]);
    else if (arg === '--no-typecheck') opts.typecheck = false;
    else throw new Error(`dialogs/build.mjs: unknown argument ${arg}`);
  }
  return opts;
}

function typecheck(tsconfigPath) {
  const config = ts.getParsedCommandLineOfConfigFile(tsconfigPath, {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    },
  });
  if (!config) throw new Error(`cannot read ${tsconfigPath}`);
  const program = ts.createProgram({ rootNames: config.fileNames, options: config.options });
  const diagnostics = [...config.errors, ...ts.getPreEmitDiagnostics(program)];
  if (diagnostics.length > 0) {
    const host = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => root, getNewLine: () => '\n' };
    const format = process.stderr.isTTY ? ts.formatDiagnosticsWithColorAndContext : ts.formatDiagnostics;
    process.stderr.write(format(diagnostics, host));
    throw new Error(`${path.relative(root, tsconfigPath)}: ${diagnostics.length} type error(s)`);
  }
}

export async function buildDialogs({ outdir = path.join(root, 'dist'), typecheck: check = true, log = console.log } = {}) {
  const outputs = [];
  for (const name of DIALOGS) {
    const dir = path.join(root, 'dialogs', name);
    if (check) {
      log(`dialogs: type-checking dialogs/${name} (tsconfig ${path.relative(root, path.join(dir, 'tsconfig.json'))})`);
      typecheck(path.join(dir, 'tsconfig.json'));
    }
    const outfile = path.join(outdir, 'dialogs', name, 'main.js');
    log(`dialogs: bundling dialogs/${name}/main.ts -> ${path.relative(root, outfile) || outfile}`);
    await build({
      entryPoints: [path.join(dir, 'main.ts')],
      outfile,
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      // GJS 1.74 (Debian 12) embeds SpiderMonkey 102.
      target: 'firefox102',
      // gi:// modules and GJS's built-ins are provided by gjs itself at run time.
      external: ['gi://*', 'system', 'gettext', 'cairo', 'console'],
      mainFields: ['module', 'main'],
      tsconfig: path.join(dir, 'tsconfig.json'),
      legalComments: 'none',
      logLevel: 'warning',
    });
    outputs.push(outfile);
  }
  return outputs;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const opts = parseArgs(process.argv.slice(2));
    const outputs = await buildDialogs(opts);
    console.log(`dialogs: built ${outputs.length} dialog(s) into ${opts.outdir}`);
  } catch (e) {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  }
}
