import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { whichProgram } from '../src/deps.js';
import { closeOnExecFrom } from '../src/native/addon.js';
import { packageRoot } from '../src/paths.js';

/**
 * The sandboxed-local baseline's app: a host app that the host's
 * xdg-desktop-portal takes for a Flatpak app, as a Flatpak user's app is.
 *
 * xdg-desktop-portal 1.16 (src/xdp-utils.c) asks the bus for the caller's
 * pid (GetConnectionUnixProcessID), opens /proc/<pid>/root and reads
 * `.flatpak-info` there; if it exists the caller is the Flatpak app named by
 * its [Application] name= (cached per unique name). Nothing more is checked,
 * so a bubblewrap root of our own with that file in it is enough, as it is
 * how flatpak itself runs apps (`flatpak run` is bwrap with
 * `--ro-bind-data … /.flatpak-info`). The frontend then adds every file the
 * dialog returns to the document store for that app (documents.c
 * register_document: AddFull, reuse-existing, persistent, as-needed-by-app)
 * and answers with a URI under the store's mount — the grant a Flatpak user
 * pays and a host app does not.
 *
 * The sandbox has a fresh tmpfs root with /usr (and the merged-/usr links),
 * /etc, the checkout read-only, its own /proc, /dev and /tmp, a pid
 * namespace, and the host session's bus socket bound at
 * /run/flatpak/bus. Unlike `flatpak run` there is no xdg-dbus-proxy between
 * the app and the bus: the baseline is the cheapest a sandboxed app can be,
 * which is the harder one for the forwarded call to be compared with.
 */
export const SANDBOXED_APP_ID = 'org.example.Bench';

export interface SandboxedApp {
  /** k timed OpenFile calls after `warmup` untimed ones, timed in the app. */
  run(k: number, warmup: number): Promise<{ samples: number[]; uris: string[] }>;
  close(): Promise<void>;
}

function flatpakInfo(appId: string): string {
  // The keys flatpak 1.14 writes that the 1.16 frontend reads somewhere;
  // FileChooser itself needs only [Application] name.
  return [
    '[Application]',
    `name=${appId}`,
    'runtime=runtime/org.freedesktop.Platform/x86_64/23.08',
    '',
    '[Instance]',
    'instance-id=1000000001',
    'branch=master',
    'arch=x86_64',
    'flatpak-version=1.14.10',
    'session-bus-proxy=true',
    'system-bus-proxy=true',
    '',
    '[Context]',
    'shared=network;ipc;',
    'sockets=x11;wayland;pulseaudio;',
    '',
  ].join('\n');
}

function busSocketOf(address: string): string {
  const m = /^unix:path=([^,;]+)/.exec(address);
  if (!m) throw new Error(`the host bus address ${address} is not a unix:path= socket`);
  return m[1]!;
}

/** Start the app in its sandbox, on the bus at `hostBusAddress`; `dir` holds its .flatpak-info. */
export async function startSandboxedApp(opts: { hostBusAddress: string; dir: string; appId?: string }): Promise<SandboxedApp> {
  const bwrap = whichProgram(['/usr/bin/bwrap', 'bwrap']);
  if (!bwrap) throw new Error('bubblewrap (bwrap) is not installed; install it with: sudo apt-get install bubblewrap (scripts/setup.sh tests does)');
  const appId = opts.appId ?? SANDBOXED_APP_ID;
  mkdirSync(opts.dir, { recursive: true });
  const info = path.join(opts.dir, 'flatpak-info');
  writeFileSync(info, flatpakInfo(appId));
  const root = packageRoot();
  const merged = ['bin', 'sbin', 'lib', 'lib64', 'lib32', 'libx32'].filter((d) => existsSync(`/${d}`)).flatMap((d) => ['--symlink', `usr/${d}`, `/${d}`]);
  const args = [
    '--unshare-pid',
    '--die-with-parent',
    '--ro-bind', '/usr', '/usr',
    ...merged,
    '--ro-bind', '/etc', '/etc',
    '--proc', '/proc',
    '--dev', '/dev',
    '--tmpfs', '/tmp',
    '--ro-bind', root, root,
    '--ro-bind', info, '/.flatpak-info',
    '--bind', busSocketOf(opts.hostBusAddress), '/run/flatpak/bus',
    '--clearenv',
    '--setenv', 'PATH', '/usr/bin:/bin',
    '--setenv', 'HOME', '/tmp',
    '--setenv', 'DBUS_SESSION_BUS_ADDRESS', 'unix:path=/run/flatpak/bus',
    '--setenv', 'FLATPAK_ID', appId,
    '--chdir', '/tmp',
    '--',
    process.execPath,
    path.join(root, 'dist', 'bench', 'sandboxed-app.js'),
  ];
  // Our own D-Bus connections must not leak into the sandbox (see src/exec.ts).
  closeOnExecFrom(3);
  const child: ChildProcessWithoutNullStreams = spawn(bwrap, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr = (stderr + c).slice(-8192)));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(`the sandboxed app exited (${signal ?? code}): ${stderr.trim()}`)));
  const next = async (): Promise<Record<string, unknown>> => {
    const r = await Promise.race([lines.next(), exited.then((why) => Promise.reject(new Error(why)))]);
    if (r.done) throw new Error(`the sandboxed app closed its output: ${stderr.trim()}`);
    return JSON.parse(r.value) as Record<string, unknown>;
  };
  try {
    await next(); // {"ready": ...}
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    async run(k, warmup) {
      child.stdin.write(`${JSON.stringify({ run: k, warmup })}\n`);
      const r = await next();
      if (typeof r.error === 'string') throw new Error(`sandboxed OpenFile: ${r.error}`);
      return { samples: r.samples as number[], uris: r.uris as string[] };
    },
    async close() {
      child.stdin.end();
      const done = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
      if (!done) child.kill('SIGKILL');
    },
  };
}

/**
 * A PATH under `dir` with every program of the current PATH but `program`:
 * for a host session whose document store cannot run `flatpak info` (its
 * AddFull then takes its quick fallback check), the floor of the
 * sandboxed-local baseline. Symbolic links only.
 */
export function pathWithout(program: string, dir: string): string {
  mkdirSync(dir, { recursive: true });
  for (const d of (process.env.PATH ?? '/usr/bin:/bin').split(':').filter(Boolean)) {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      continue;
    }
    for (const name of names) {
      if (name === program || existsSync(path.join(dir, name))) continue;
      try {
        symlinkSync(path.join(d, name), path.join(dir, name));
      } catch {
        /* a name already taken by an earlier PATH entry */
      }
    }
  }
  return dir;
}
