import { existsSync } from 'node:fs';
import { userInfo } from 'node:os';
import { DEPENDENCIES, whichProgram } from '../deps.js';
import { readUsernsFacts, usernsChecks, type Check } from '../host/userns.js';
import { parse, type Verb } from './common.js';

const usage = `Usage: xdp-vm doctor [--side host|guest|all] [--json]

Check every runtime dependency and print the exact command that installs
each missing one. Exits 1 when something is missing.

Run it as the user the host daemon runs as: not as root, the daemon starts
virtiofsd in a user namespace, and the host checks then include what that
needs (subordinate uids and gids, user namespaces, /dev/fuse for the user).`;

/** The guest half runs on Debian 12's nodejs 18.20 too; the host half needs 20.19 (README: "Which Node.js each half needs"). */
export function nodeCheck(side: string, version = process.versions.node): Check {
  const [maj = 0, min = 0] = version.split('.').map(Number);
  const host = maj > 20 || (maj === 20 && min >= 19);
  const guest = host || (maj === 18 && min >= 20);
  const ok = side === 'guest' ? guest : host;
  const need = side === 'guest' ? '18.20, or 20.19 or newer' : '20.19 or newer';
  const fix = side === 'guest' ? "sudo apt-get install nodejs  # Debian 12's 18.20 will do" : 'sudo apt-get install nodejs  # Debian 13 ships Node 20.19';
  return { what: `Node.js ${version} (need ${need})`, ok, found: process.execPath, fix: ok ? undefined : fix };
}

async function vsockCheck(): Promise<Check> {
  try {
    const { vsockAvailable } = await import('../transport/af-vsock.js');
    const r = vsockAvailable();
    return { what: 'AF_VSOCK native addon', ok: r.ok, fix: r.ok ? undefined : r.reason };
  } catch (err) {
    return { what: 'AF_VSOCK native addon', ok: false, fix: `${(err as Error).message}; run: npm install (needs: sudo apt-get install build-essential python3)` };
  }
}

export const doctorVerb: Verb = {
  name: 'doctor',
  usage,
  async run(argv) {
    const { values } = parse(argv, { side: { type: 'string', default: 'all' }, json: { type: 'boolean' } }, usage);
    if (values.help) return console.log(usage), 0;
    const side = values.side as string;
    const checks: Check[] = [nodeCheck(side)];
    for (const dep of DEPENDENCIES) {
      if (dep.side === 'test' || (side !== 'all' && dep.side !== 'both' && dep.side !== side)) continue;
      const found = whichProgram(dep.candidates);
      checks.push({ what: `${dep.what} (${dep.id})`, ok: !!found, found, fix: found ? undefined : `sudo apt-get install ${dep.debianPackage}` });
    }
    if (side !== 'guest') {
      const uid = process.getuid?.() ?? 0;
      // As root virtiofsd needs no namespace; as a user it needs these (see src/host/userns.ts).
      if (uid === 0) checks.push({ what: 'FUSE device /dev/fuse (document store)', ok: existsSync('/dev/fuse'), fix: 'sudo apt-get install fuse3, and load the fuse module' });
      else checks.push(...usernsChecks(readUsernsFacts({ name: userInfo().username, uid, gid: process.getgid?.() ?? 0 })));
    }
    checks.push(await vsockCheck());
    if (values.json) console.log(JSON.stringify(checks, null, 2));
    else
      for (const c of checks) {
        console.log(`${c.ok ? 'ok     ' : 'MISSING'} ${c.what}${c.found && c.ok ? `: ${c.found}` : ''}`);
        if (!c.ok && c.fix) console.log(`        fix: ${c.fix}`);
      }
    const missing = checks.filter((c) => !c.ok);
    if (!values.json) console.log(missing.length ? `\n${missing.length} problem(s) found.` : '\nEverything is in place.');
    return missing.length ? 1 : 0;
  },
};
