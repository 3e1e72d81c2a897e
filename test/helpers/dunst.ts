import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Bus } from '../../src/dbus/bus.js';
import { whichProgram } from '../../src/deps.js';
import { runProgram, startService, type Service } from '../../src/exec.js';
import { asUser, type SessionUser } from '../../src/testbed/as-user.js';

/**
 * A real notification server on a host bus: Debian's dunst on a private X
 * display, with a config of its own (nothing of the machine's dunstrc), so
 * what `dunstctl history` shows is what a user of that config saw.
 *
 * - Nothing expires: a notification stays displayed until the test closes it.
 * - Body markup is parsed ("full"), as GNOME Shell and KDE do, so text that
 *   was not escaped would be rendered as markup.
 * - The context menu's "dmenu" is a script that picks the line holding the
 *   text in `<dir>/pick` (dunst lists each action as "#LABEL (SUMMARY) [ID,KEY]"),
 *   which is how a test clicks an action other than the default one.
 */
export interface DunstEntry {
  id: number;
  appname: string;
  summary: string;
  body: string;
  /** The markup dunst renders: the format "%s\n%b" applied. */
  message: string;
}

export interface Dunst {
  /** Notifications closed so far, newest first (dunst keeps only closed ones there). */
  history(): Promise<DunstEntry[]>;
  displayed(): Promise<number>;
  /** `dunstctl action N`: the default action of the N-th displayed notification. */
  action(position: number): Promise<void>;
  /** Open the context menu and pick the action whose line contains `text`. */
  pick(text: string): Promise<void>;
  closeAll(): Promise<void>;
  stop(): Promise<void>;
}

const NAME = 'org.freedesktop.Notifications';

/**
 * A test program by its Debian package (src/deps.ts's table does not list
 * dunst and bubblewrap yet): its path, or an error that says what to install.
 */
export function testProgram(name: string, debianPackage: string): string {
  const found = whichProgram([`/usr/bin/${name}`, name]);
  if (!found) throw new Error(`${name} is not installed; install it with: sudo apt-get install ${debianPackage} (scripts/setup.sh tests does)`);
  return found;
}

export async function startDunst(opts: { dir: string; display: string; busEnv: Record<string, string>; user?: SessionUser }): Promise<Dunst> {
  mkdirSync(opts.dir, { recursive: true });
  const rc = path.join(opts.dir, 'dunstrc');
  const picker = path.join(opts.dir, 'dmenu');
  const pickFile = path.join(opts.dir, 'pick');
  writeFileSync(pickFile, '');
  // dunst runs its dmenu through a shell of its own; this script is ours alone.
  writeFileSync(picker, `#!/bin/sh\nexec grep -m1 -F -e "$(cat '${pickFile}')"\n`);
  chmodSync(picker, 0o755);
  writeFileSync(
    rc,
    [
      '[global]',
      '    markup = full',
      '    format = "%s\\n%b"',
      '    history_length = 200',
      '    notification_limit = 0',
      '    show_indicators = no',
      `    dmenu = ${picker}`,
      '[urgency_low]',
      '    timeout = 0',
      '[urgency_normal]',
      '    timeout = 0',
      '[urgency_critical]',
      '    timeout = 0',
      '',
    ].join('\n'),
  );
  const env = { ...opts.busEnv, DISPLAY: opts.display, HOME: opts.dir, XDG_CONFIG_HOME: path.join(opts.dir, 'config') };
  const service: Service = startService('dunst', ...asUser(opts.user, testProgram('dunst', 'dunst'), ['-conf', rc]), { env });
  const bus = await Bus.connect(opts.busEnv.DBUS_SESSION_BUS_ADDRESS!);
  try {
    const deadline = Date.now() + 15_000;
    while (!(await bus.nameOwner(NAME))) {
      if (!service.running) throw new Error(`dunst exited at start: ${service.stderr}`);
      if (Date.now() > deadline) throw new Error(`dunst did not take ${NAME} within 15 s: ${service.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    await service.stop();
    throw err;
  } finally {
    bus.close();
  }

  const ctl = async (...args: string[]) => (await runProgram(testProgram('dunstctl', 'dunst'), args, { env: { ...opts.busEnv, PATH: process.env.PATH ?? '/usr/bin:/bin' }, timeoutMs: 10_000 })).stdout;
  return {
    async history() {
      const json = JSON.parse(await ctl('history')) as { data: Record<string, { data: unknown }>[][] };
      return (json.data[0] ?? []).map((e) => ({
        id: e.id?.data as number,
        appname: e.appname?.data as string,
        summary: e.summary?.data as string,
        body: e.body?.data as string,
        message: e.message?.data as string,
      }));
    },
    async displayed() {
      return Number((await ctl('count', 'displayed')).trim());
    },
    async action(position) {
      await ctl('action', String(position));
    },
    async pick(text) {
      writeFileSync(pickFile, text);
      await ctl('context');
    },
    async closeAll() {
      await ctl('close-all');
    },
    async stop() {
      await service.stop();
    },
  };
}
