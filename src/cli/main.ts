#!/usr/bin/env node
import { ConfigError } from '../config/load.js';
import { MissingDependencyError } from '../deps.js';
import { VERSION } from '../version.js';
import { UsageError, errorText, type Verb } from './common.js';
import { doctorVerb } from './verb-doctor.js';
import { grantsVerb } from './verb-grants.js';
import { guestVerb } from './verb-guest.js';
import { hostVerb } from './verb-host.js';
import { logVerb } from './verb-log.js';
import { permissionsVerb } from './verb-permissions.js';
import { installGuestVerb, uninstallGuestVerb } from './verb-install-guest.js';
import { mountAgentVerb } from './verb-mount-agent.js';
import { vmsVerb } from './verb-vms.js';

const VERBS: Verb[] = [hostVerb, guestVerb, vmsVerb, grantsVerb, permissionsVerb, logVerb, doctorVerb, installGuestVerb, uninstallGuestVerb, mountAgentVerb];

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
  const verb = VERBS.find((v) => v.name === name);
  if (!verb) throw new UsageError(`unknown verb "${name}"\n\n${help()}`);
  return verb.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof ConfigError) {
      for (const p of err.problems) console.error(`xdp-vm: ${err.file}: ${p}`);
      process.exit(2);
    }
    if (err instanceof UsageError) {
      console.error(`xdp-vm: ${err.message}`);
      process.exit(2);
    }
    if (err instanceof MissingDependencyError) {
      console.error(`xdp-vm: ${err.message}`);
      process.exit(3);
    }
    console.error(`xdp-vm: ${errorText(err)}`);
    process.exit(1);
  },
);
