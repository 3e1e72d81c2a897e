#!/usr/bin/env node
// `npm test`: install what the tests need, build, then run the four tiers in
// order (unit, integration, hostile, e2e) and say which ran and why any did not.
// Plain JavaScript: it runs before the npm packages exist.
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const only = args.filter((a) => !a.startsWith('-'));
const tiers = ['unit', 'integration', 'hostile', 'e2e'].filter((t) => only.length === 0 || only.includes(t));

function run(cmd, argv, opts = {}) {
  return spawnSync(cmd, argv, { cwd: root, stdio: 'inherit', ...opts });
}

function usable(file, mode = constants.R_OK | constants.W_OK) {
  try {
    accessSync(file, mode);
    return true;
  } catch {
    return false;
  }
}

/** Why a tier cannot run on this machine, or null. Only missing hardware counts. */
function missingHardware(tier) {
  if ((tier === 'integration' || tier === 'hostile') && !usable('/dev/fuse')) return 'no usable /dev/fuse: the document store (xdg-document-portal) needs FUSE';
  if (tier === 'e2e') {
    if (process.arch !== 'x64') return `the e2e guests are x86_64 and this machine is ${process.arch}`;
    if (!usable('/dev/fuse')) return 'no usable /dev/fuse: the document store (xdg-document-portal) needs FUSE';
  }
  return null;
}

if (!args.includes('--no-setup')) {
  const setup = run('bash', [path.join('scripts', 'setup.sh'), 'tests']);
  if (setup.status !== 0) process.exit(setup.status ?? 1);
}

const results = [];
mkdirSync(path.join(root, 'test-results'), { recursive: true });
// Tests are not compiled into dist/ (only the code and the test bed are), so they are type-checked here.
if (tiers.includes('unit')) {
  console.log('\n=== type-checking the tests');
  const tsc = run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.test.json']);
  if (tsc.status !== 0) results.push({ tier: 'typecheck', state: 'FAILED', detail: 'tsc -p tsconfig.test.json reported errors above' });
}
for (const tier of tiers) {
  const why = missingHardware(tier);
  if (why) {
    console.log(`\n=== ${tier} tier: SKIPPED: ${why}`);
    results.push({ tier, state: 'skipped', detail: why });
    continue;
  }
  if (tier === 'e2e') {
    const kvm = existsSync('/sys/module/kvm_pvm') ? 'TCG (this KVM is kvm_pvm, which cannot boot a stock kernel)' : usable('/dev/kvm') ? 'KVM' : 'TCG (no usable /dev/kvm)';
    console.log(`\n=== e2e tier: QEMU guests under ${kvm}`);
  } else console.log(`\n=== ${tier} tier`);
  const report = path.join(root, 'test-results', `${tier}.json`);
  const vitest = run(process.execPath, [path.join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', '--project', tier, '--reporter=default', '--reporter=json', `--outputFile.json=${report}`]);
  let counts = '';
  try {
    const r = JSON.parse(readFileSync(report, 'utf8'));
    counts = `${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped, of ${r.numTotalTests}`;
  } catch {
    counts = 'no report';
  }
  results.push({ tier, state: vitest.status === 0 ? 'passed' : 'FAILED', detail: counts });
}

console.log('\n=== summary');
for (const r of results) console.log(`${r.tier.padEnd(12)} ${r.state.padEnd(8)} ${r.detail}`);
process.exit(results.some((r) => r.state === 'FAILED') ? 1 : 0);
