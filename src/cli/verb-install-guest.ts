import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { dependency, whichProgram } from '../deps.js';
import { runProgram } from '../exec.js';
import { applyInstall, conflicts, planInstall, uninstall } from '../guest/install.js';
import { UsageError, parse, type Verb } from './common.js';

const usage = `Usage: xdp-vm install-guest [--dry-run] [--force] [--root DIR] [--mount-point PATH] [--tag TAG]
                            [--transport SPEC] [--command CMD] [--portal-version X.Y]
       xdp-vm uninstall-guest [--root DIR]

Run inside a VM, as root. Installs the guest side: vm.portal and portals.conf
(plus, for xdg-desktop-portal 1.16, a pinned portal folder and a drop-in for
its unit), the D-Bus activation file and the user unit of the guest backend,
the system unit that mounts the document share, /etc/xdp-vm/guest.json, and
GTK_USE_PORTAL=1 / GDK_DEBUG=portals for sessions. Refuses if the stock
xdg-desktop-portal is missing.

  --dry-run             list the files it would write, and write nothing
  --root DIR            write under DIR as if it were / (image builders, tests)
  --mount-point PATH    where the share is mounted (default /run/xdp-vm/doc;
                        must match the host config's share.guestMount)
  --tag TAG             the share's virtio-fs tag (default xdp-vm-doc)
  --transport SPEC      fix the link (vsock:2:5000, serial:/dev/...); default: auto
  --command CMD         how units run xdp-vm (default: this xdp-vm)
  --portal-version V    the guest's xdg-desktop-portal version (default: asked)
  --force               overwrite files that install-guest did not write`;

function thisCommand(): string {
  const onPath = whichProgram(['xdp-vm']);
  if (onPath) return onPath;
  return `${process.execPath} ${realpathSync(process.argv[1]!)}`;
}

async function portalVersion(root: string, explicit?: string): Promise<string> {
  if (explicit) return explicit;
  const binary = path.join(root, dependency('xdg-desktop-portal').candidates[0]!);
  if (!existsSync(binary)) throw new UsageError(`the stock xdg-desktop-portal is not installed in this VM (${binary}); install it with: sudo apt-get install xdg-desktop-portal`);
  if (root !== '/') throw new UsageError('with --root, give --portal-version (the guest image\'s xdg-desktop-portal version)');
  const { stdout } = await runProgram(binary, ['--version']);
  const v = /(\d+\.\d+(\.\d+)?)/.exec(stdout)?.[1];
  if (!v) throw new Error(`cannot read the version from "${stdout.trim()}"`);
  return v;
}

async function enableUnits(dryRun: boolean): Promise<void> {
  const systemctl = whichProgram(['systemctl']);
  const steps: string[][] = [['daemon-reload'], ['enable', '--now', 'xdp-vm-mount.service'], ['--global', 'enable', 'xdp-vm-guest.service']];
  if (!systemctl || !existsSync('/run/systemd/system')) {
    console.log('No systemd here: start "xdp-vm mount-agent" as root at boot yourself.');
    return;
  }
  for (const s of steps) {
    console.log(`${dryRun ? 'would run' : 'running'}: systemctl ${s.join(' ')}`);
    if (!dryRun) await runProgram(systemctl, s, { timeoutMs: 60_000 });
  }
}

export const installGuestVerb: Verb = {
  name: 'install-guest',
  usage,
  async run(argv) {
    const { values } = parse(
      argv,
      {
        'dry-run': { type: 'boolean' },
        root: { type: 'string', default: '/' },
        'mount-point': { type: 'string', default: '/run/xdp-vm/doc' },
        tag: { type: 'string', default: 'xdp-vm-doc' },
        transport: { type: 'string' },
        command: { type: 'string' },
        'portal-version': { type: 'string' },
        force: { type: 'boolean' },
      },
      usage,
    );
    if (values.help) return console.log(usage), 0;
    const root = path.resolve(values.root as string);
    const version = await portalVersion(root, values['portal-version'] as string | undefined);
    const files = planInstall({
      root,
      command: (values.command as string | undefined) ?? thisCommand(),
      mountPoint: values['mount-point'] as string,
      tag: values.tag as string,
      portalVersion: version,
      transport: values.transport as string | undefined,
    });
    console.log(`${values['dry-run'] ? 'Would write' : 'Writing'} (xdg-desktop-portal ${version}${root === '/' ? '' : `, under ${root}`}):`);
    for (const f of files) console.log(`  ${f.path}\n      ${f.why}`);
    const clash = conflicts(root, files);
    if (clash.length && !values.force) {
      throw new UsageError(`these files exist and were not written by install-guest; move them away or pass --force:\n  ${clash.join('\n  ')}`);
    }
    if (!values['dry-run']) applyInstall(root, files);
    if (root === '/') await enableUnits(!!values['dry-run']);
    return 0;
  },
};

export const uninstallGuestVerb: Verb = {
  name: 'uninstall-guest',
  usage,
  async run(argv) {
    const { values } = parse(argv, { root: { type: 'string', default: '/' } }, usage);
    if (values.help) return console.log(usage), 0;
    const removed = uninstall(path.resolve(values.root as string));
    for (const f of removed) console.log(`removed ${f}`);
    return 0;
  },
};
