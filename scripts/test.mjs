#!/usr/bin/env node
// `npm test`: install what the tests need, build, then run the four tiers in
// order (unit, integration, hostile, e2e) and say which ran and why any did not.
// Plain JavaScript: it runs before the npm packages exist.
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
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
const reportsDir = path.join(root, 'test-results');
mkdirSync(reportsDir, { recursive: true });
const vitestJs = path.join(root, 'node_modules', 'vitest', 'vitest.mjs');

/**
 * The host daemon never runs as root in a test. Started as root (CI), the
 * integration and hostile tiers run as the ordinary user scripts/setup.sh
 * creates, the whole vitest process tree with it, as a developer would run
 * them; only their `*.as-root.test.ts` files run as root, after: the
 * privileged helper's own, and those whose test machinery needs root (a
 * root virtiofsd beside QEMU; a user's session started from root). None
 * of them runs our host daemon as root.
 * The e2e tier stays root, for its guests' machinery (each guest's root
 * filesystem is served by a root virtiofsd, libvirt's by a root libvirtd),
 * and its World runs the host session as that user.
 */
function tierPasses(tier) {
  const self = { command: [process.execPath], filter: [], suffix: '' };
  const user = process.env.XDP_VM_TEST_USER ?? 'xdpvm-test';
  if (process.getuid?.() === 0 && tier === 'e2e') return [{ ...self, who: `host sessions as ${user}; guests' machinery as root` }];
  if (process.getuid?.() !== 0 || (tier !== 'integration' && tier !== 'hostile')) return [self];
  const entry = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.split(':')[0] === user);
  if (!entry) {
    console.log(`(no user ${user}: scripts/setup.sh tests, run as root, creates it; running ${tier} as root)`);
    return [self];
  }
  const home = entry.split(':')[5];
  // The tests' reports and screenshots go to test-results/ (git ignores it): the user's to write.
  run('chown', ['-R', `${entry.split(':')[2]}:${entry.split(':')[3]}`, reportsDir]);
  const asUser = {
    command: ['setpriv', '--reuid', user, '--regid', user, '--init-groups', '--', 'env', '-u', 'XDG_RUNTIME_DIR', '-u', 'DBUS_SESSION_BUS_ADDRESS', `HOME=${home}`, `USER=${user}`, `LOGNAME=${user}`, process.execPath],
    filter: ['--exclude', '**/*.as-root.test.ts', '--passWithNoTests'],
    suffix: '',
    note: `--- ${tier}: as ${user}, the ordinary user scripts/setup.sh made (the host daemon never runs as root)`,
    who: `as ${user}; *.as-root.test.ts as root`,
  };
  const asRoot = { ...self, filter: ['as-root.test', '--passWithNoTests'], suffix: '-as-root', note: `--- ${tier}: the *.as-root.test.ts files, as root` };
  return [asUser, asRoot];
}
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
  const passes = tierPasses(tier);
  let failed = false;
  const total = { passed: 0, failed: 0, skipped: 0, all: 0 };
  let counts = '';
  for (const pass of passes) {
    if (pass.note) console.log(pass.note);
    const report = path.join(reportsDir, `${tier}${pass.suffix}.json`);
    rmSync(report, { force: true });
    const vitest = run(pass.command[0], [...pass.command.slice(1), vitestJs, 'run', '--configLoader', 'runner', '--project', tier, ...pass.filter, '--reporter=default', '--reporter=json', `--outputFile.json=${report}`]);
    if (vitest.status !== 0) failed = true;
    try {
      const r = JSON.parse(readFileSync(report, 'utf8'));
      total.passed += r.numPassedTests;
      total.failed += r.numFailedTests;
      total.skipped += r.numPendingTests + r.numTodoTests;
      total.all += r.numTotalTests;
    } catch {
      counts = 'no report';
    }
  }
  counts ||= `${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped, of ${total.all}`;
  results.push({ tier, state: failed ? 'FAILED' : 'passed', detail: `${counts}${passes[0].who ? ` (${passes[0].who})` : ''}` });
}

console.log('\n=== summary');
for (const r of results) console.log(`${r.tier.padEnd(12)} ${r.state.padEnd(8)} ${r.detail}`);
process.exit(results.some((r) => r.state === 'FAILED') ? 1 : 0);
