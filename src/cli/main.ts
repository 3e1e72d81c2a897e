#!/usr/bin/env -S node --max-semi-space-size=4
import { VERSION } from '../version.js';
import type { Verb } from './common.js';

/**
 * Verbs load on use: the guest backend starts by D-Bus activation, often in a
 * VM without KVM, where every module read costs; it should load only its own.
 */
interface VerbEntry {
  name: string;
  summary: string;
  load: () => Promise<Verb>;
}

const VERBS: VerbEntry[] = [
  { name: 'host', summary: 'run the host daemon', load: async () => (await import('./verb-host.js')).hostVerb },
  { name: 'guest', summary: 'run the guest backend', load: async () => (await import('./verb-guest.js')).guestVerb },
  { name: 'vms', summary: 'list VMs and whether each is connected', load: async () => (await import('./verb-vms.js')).vmsVerb },
  { name: 'grants', summary: 'list or revoke what each VM has been given', load: async () => (await import('./verb-grants.js')).grantsVerb },
  { name: 'share', summary: 'share a whole folder with a VM, list or remove folder shares', load: async () => (await import('./verb-share.js')).shareVerb },
  { name: 'permissions', summary: 'allow, deny or ask: what each VM may request', load: async () => (await import('./verb-permissions.js')).permissionsVerb },
  { name: 'log', summary: 'show the audit trail of decisions, grants and revokes', load: async () => (await import('./verb-log.js')).logVerb },
  { name: 'doctor', summary: 'check runtime dependencies', load: async () => (await import('./verb-doctor.js')).doctorVerb },
  { name: 'install-host', summary: 'install the host daemon\'s user unit, D-Bus activation and a config skeleton', load: async () => (await import('./verb-install-host.js')).installHostVerb },
  { name: 'uninstall-host', summary: 'remove what install-host installed', load: async () => (await import('./verb-install-host.js')).uninstallHostVerb },
  { name: 'install-guest', summary: 'install the guest side into this VM', load: async () => (await import('./verb-install-guest.js')).installGuestVerb },
  { name: 'uninstall-guest', summary: 'remove what install-guest installed', load: async () => (await import('./verb-install-guest.js')).uninstallGuestVerb },
  { name: 'helper', summary: 'the privileged helper (root, system bus): taps on allowed bridges, allowed USB devices', load: async () => (await import('./verb-helper.js')).helperVerb },
  { name: 'net', summary: 'networks: list, join or leave (in a VM), attach or detach a VM (on the host)', load: async () => (await import('./verb-net.js')).netVerb },
  { name: 'usb', summary: 'host USB devices: list, attach or detach (in a VM, or on the host for a VM)', load: async () => (await import('./verb-usb.js')).usbVerb },
  { name: 'open-uri', summary: 'hand a link to the host (in a VM: the "Open on host" handler runs it)', load: async () => (await import('./verb-open-uri.js')).openUriVerb },
  { name: 'mount-agent', summary: 'mount the document share in a VM (root service)', load: async () => (await import('./verb-mount-agent.js')).mountAgentVerb },
];

function help(): string {
  const width = Math.max(...VERBS.map((v) => v.name.length));
  return [
    `xdp-vm ${VERSION}: portals for apps in virtual machines`,
    '',
    'Usage: xdp-vm VERB [OPTIONS]   (xdp-vm VERB --help for details)',
    '',
    ...VERBS.map((v) => `  ${v.name.padEnd(width)}  ${v.summary}`),
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') return console.log(help()), 0;
  if (name === '--version') return console.log(VERSION), 0;
  const entry = VERBS.find((v) => v.name === name);
  if (!entry) {
    console.error(`xdp-vm: unknown verb "${name}"\n\n${help()}`);
    return 2;
  }
  return (await entry.load()).run(rest);
}

/** Exit statuses: 2 for usage and config errors, 3 for a missing program, 1 otherwise. */
function report(err: unknown): number {
  const e = err as Error & { problems?: string[]; file?: string };
  if (e.name === 'ConfigError' && e.problems) {
    for (const p of e.problems) console.error(`xdp-vm: ${e.file}: ${p}`);
    return 2;
  }
  console.error(`xdp-vm: ${e.name === 'BusCallError' ? e.message.replace(/^\w+: org\.freedesktop\.portal\.Error\.\w+: /, '') : e.message}`);
  if (e.name === 'UsageError') return 2;
  if (e.name === 'MissingDependencyError') return 3;
  return 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => process.exit(report(err)),
);
