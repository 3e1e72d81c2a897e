import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Bus, type Vardict } from '../../dbus/bus.js';
import { callPortalRequest } from '../../dbus/portal-request.js';
import { typed } from '../../dbus/values.js';

/**
 * Runs inside a guest: what an app does with the file chooser portal, as a
 * D-Bus client of the guest's stock xdg-desktop-portal. Prints one JSON line.
 *   app.js open TITLE           → reads every chosen file
 *   app.js save TITLE CONTENT   → writes CONTENT to the chosen file
 * With XDP_VM_APP_USER=UID:GID it touches the files as that user, as the
 * desktop user of a guest does (the session here is root's; see portal-vm.ts).
 */
/** The first MiB: enough for the tests' files, and a big file's first bytes. */
function readHead(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(1024 * 1024);
    return buf.subarray(0, readSync(fd, buf, 0, buf.length, 0)).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

async function main(): Promise<void> {
  const [mode, title = 'Open', toWrite = ''] = process.argv.slice(2);
  const bus = await Bus.connect(process.env.DBUS_SESSION_BUS_ADDRESS!);
  const options: Vardict = mode === 'save' ? { current_name: typed('s', 'from-guest.txt') } : {};
  const t0 = performance.timeOrigin + performance.now();
  const reply = await callPortalRequest(bus, {
    interface: 'org.freedesktop.portal.FileChooser',
    member: mode === 'save' ? 'SaveFile' : 'OpenFile',
    signature: 'ssa{sv}',
    args: ['', title],
    options,
  }).finally(() => bus.close());
  const t1 = performance.timeOrigin + performance.now();
  const uris = (reply.results.uris?.value as string[] | undefined) ?? [];
  const appUser = /^(\d+):(\d+)$/.exec(process.env.XDP_VM_APP_USER ?? '');
  if (appUser) {
    process.setegid!(Number(appUser[2]));
    process.seteuid!(Number(appUser[1]));
  }
  const files = uris.map((uri) => {
    const r0 = performance.now();
    const path = fileURLToPath(uri);
    try {
      if (mode === 'save') writeFileSync(path, toWrite);
      const content = readHead(path);
      return { path, content, readMs: performance.now() - r0 };
    } catch (err) {
      return { path, error: (err as NodeJS.ErrnoException).code ?? String(err) };
    }
  });
  // Times on the guest's clock, for hop marks taken in the guest.
  console.log(JSON.stringify({ response: reply.response, ms: t1 - t0, t0, t1, files }));
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.log(JSON.stringify({ error: (err as Error).message }));
    process.exit(1);
  },
);
