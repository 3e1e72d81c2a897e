import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { whichProgram } from '../deps.js';
import { runProgram } from '../exec.js';
import { applyHostInstall, clashes, fileStates, HOST_UNIT, hostPaths, planHostInstall, uninstallHost } from '../host/install.js';
import { NODE_FLAGS } from '../paths.js';
import { UsageError, parse, type Verb } from './common.js';

const usage = `Usage: xdp-vm install-host [--dry-run] [--force] [--system] [--root DIR] [--command CMD]
       xdp-vm uninstall-host [--system] [--root DIR]

Install the host side for this user: the host daemon's systemd user unit
(xdp-vm-host.service, enabled for the graphical session), the D-Bus
activation file of its bus name io.github.xdp_vm.Host, and a commented
config skeleton that names every key (~/.config/xdp-vm/config.json; JSON
with comments). A unit or activation file the system already provides (the
Debian package, or install-host --system) is not shadowed.

It never overwrites a file it did not write (--force to insist), and keeps
a file it wrote that was changed since; an existing config is always kept.
uninstall-host removes what install-host wrote, except files changed since.

  --dry-run        list the files it would write and the systemctl steps,
                   and do nothing
  --system         for every user: /usr/lib/systemd/user, /usr/share/dbus-1/
                   services, and the skeleton as /etc/xdp-vm/config.example.json
                   (run as root; each user then runs install-host for a config)
  --root DIR       write under DIR as if it were / (image builders, tests);
                   no systemctl
  --command CMD    how the unit runs xdp-vm (default: this xdp-vm)
  --force          overwrite a unit or activation file install-host did not
                   write, or one changed since it did`;

function thisCommand(): string {
  const onPath = whichProgram(['xdp-vm']);
  if (onPath) return onPath;
  return [process.execPath, ...NODE_FLAGS, realpathSync(process.argv[1]!)].join(' ');
}

/** `systemctl --user` for one user, `--global` for all; undefined when there is no systemd to ask. */
function systemctlScope(system: boolean): { systemctl: string; scope: string } | undefined {
  const systemctl = whichProgram(['systemctl']);
  if (!systemctl) return undefined;
  if (system) return { systemctl, scope: '--global' };
  const runtime = process.env.XDG_RUNTIME_DIR;
  if (!existsSync('/run/systemd/system') || !runtime || !existsSync(path.join(runtime, 'systemd', 'private'))) return undefined;
  return { systemctl, scope: '--user' };
}

async function systemctlSteps(steps: string[][], system: boolean, dryRun: boolean, mayFail = false): Promise<void> {
  const sc = systemctlScope(system);
  if (!sc) {
    const scope = system ? '--global' : '--user';
    console.log(`No systemd user manager here: run these yourself where there is one:\n${steps.map((s) => `  systemctl ${scope} ${s.join(' ')}`).join('\n')}`);
    return;
  }
  for (const s of steps) {
    if (system && s[0] === 'daemon-reload') continue;
    const args = [sc.scope, ...s];
    console.log(`${dryRun ? 'would run' : 'running'}: systemctl ${args.join(' ')}`);
    if (dryRun) continue;
    try {
      await runProgram(sc.systemctl, args, { timeoutMs: 60_000 });
    } catch (err) {
      if (!mayFail) throw err;
      console.log(`  (failed, carrying on: ${(err as Error).message.split('\n')[0]})`);
    }
  }
}

export const installHostVerb: Verb = {
  name: 'install-host',
  usage,
  async run(argv) {
    const { values } = parse(
      argv,
      {
        'dry-run': { type: 'boolean' },
        force: { type: 'boolean' },
        system: { type: 'boolean' },
        root: { type: 'string', default: '/' },
        command: { type: 'string' },
      },
      usage,
    );
    if (values.help) return console.log(usage), 0;
    const root = path.resolve(values.root as string);
    const system = !!values.system;
    const dryRun = !!values['dry-run'];
    const plan = planHostInstall({ root, system, command: (values.command as string | undefined) ?? thisCommand() });
    const states = fileStates(root, plan);
    console.log(`${dryRun ? 'Would write' : 'Writing'} (${system ? 'for every user' : 'for this user'}${root === '/' ? '' : `, under ${root}`}):`);
    for (const f of plan.files) {
      const state = states.get(f.path);
      const note = state === 'changed' || (state === 'foreign' && f.keepExisting) ? (f.keepExisting ? '  [exists: kept as it is]' : '  [changed since install-host wrote it: kept]') : '';
      console.log(`  ${f.path}${note}\n      ${f.why}`);
    }
    for (const p of plan.provided) console.log(`  (not ${p.path}: the system provides ${p.by})`);
    const clash = clashes(root, plan);
    if (clash.length && !values.force) {
      throw new UsageError(`these files exist and were not written by install-host; move them away or pass --force:\n  ${clash.join('\n  ')}`);
    }
    if (!dryRun) applyHostInstall(root, plan, !!values.force);
    if (root === '/') await systemctlSteps([['daemon-reload'], ['enable', HOST_UNIT]], system, dryRun);
    if (!dryRun && !system) console.log(`Next: add your VMs to ${hostPaths(false).config}, then: systemctl --user start ${HOST_UNIT}`);
    return 0;
  },
};

export const uninstallHostVerb: Verb = {
  name: 'uninstall-host',
  usage,
  async run(argv) {
    const { values } = parse(argv, { system: { type: 'boolean' }, root: { type: 'string', default: '/' } }, usage);
    if (values.help) return console.log(usage), 0;
    const root = path.resolve(values.root as string);
    const system = !!values.system;
    if (root === '/') await systemctlSteps([['disable', HOST_UNIT]], system, false, true);
    const { removed, kept } = uninstallHost(root, system);
    for (const f of removed) console.log(`removed ${f}`);
    for (const f of kept) console.log(`kept ${f} (changed since install-host wrote it)`);
    if (root === '/') await systemctlSteps([['daemon-reload']], system, false);
    return 0;
  },
};
