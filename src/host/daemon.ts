import type net from 'node:net';
import path from 'node:path';
import type { Config } from '../config/schema.js';
import { vmConfigs } from '../config/schema.js';
import { Bus } from '../dbus/bus.js';
import { requireProgram } from '../deps.js';
import { childLogger, type Logger } from '../log.js';
import { runtimeDir, stateHome } from '../paths.js';
import { Policy } from '../policy/policy.js';
import { PermissionTables } from '../policy/store.js';
import type { ConsentMode } from '../consent/ask.js';
import { requestConsent, type ConsentAsker } from './consent.js';
import { listenHybridVsock } from '../transport/hybrid-vsock.js';
import { SerialConnector } from '../transport/virtio-serial.js';
import { CONTROL_BUS_NAME, exportControl } from './control.js';
import { DocumentStore } from './documents.js';
import { FloodControl } from './flood.js';
import { SHARE_ID, VmShare } from './vm-share.js';
import { FolderStore } from './folders/store.js';
import { VmFolders } from './folders/vm-folders.js';
import { VmSession } from './vm-session.js';
import { loadHostHalves } from '../../portals/host.js';
import { retireLeftoverVirtiofsds } from './removed-vms.js';
import { cachedHelperProblem, HelperClient } from '../helper/client.js';
import { HostUsb } from '../../portals/usb/host-usb.js';
import { watchHostUsb } from '../../portals/usb/host-watch.js';

/**
 * The host daemon: one per user session. It listens on every VM's endpoint,
 * answers each VM's requests with that VM's identity, runs one virtiofsd per
 * VM share, and exports the control interface for the CLI.
 */
export interface HostDaemonOptions {
  config: Config;
  busAddress: string;
  /** Start a virtiofsd for every VM share (off in tests that have no VMM). */
  shares?: boolean;
  /** How consent questions are asked: the GJS dialog, the terminal, or whichever there is. */
  dialog?: ConsentMode;
  /** Where folder shares persist; default $XDG_STATE_HOME/xdp-vm/folder-shares.json. */
  folderStore?: string;
}

export interface HostDaemon {
  sessions: ReadonlyMap<string, VmSession>;
  docs: DocumentStore;
  /** Resolves when the session bus goes away. */
  busGone: Promise<void>;
  stop(): Promise<void>;
}

export async function startHostDaemon(opts: HostDaemonOptions): Promise<HostDaemon> {
  const log = childLogger({ side: 'host' });
  const hostBus = await Bus.connect(opts.busAddress, { unixFds: true });
  const docs = await DocumentStore.open(hostBus);
  const policy = await Policy.open(hostBus, log.child({ component: 'policy' }));
  const flood = new FloodControl({ limits: opts.config.flood });
  let seq = 0;
  const nextRequestId = () => `r${Date.now().toString(36)}-${(++seq).toString(36)}`;
  const sessions = new Map<string, VmSession>();
  const tables = new PermissionTables(hostBus);
  const consent: ConsentAsker = (q, signal) =>
    requestConsent(q, { policy, remember: (row) => tables.set(row), mode: opts.dialog ?? 'auto', log: log.child({ vm: q.vm.name, portal: q.portal }), signal });
  const halves = await loadHostHalves();
  // A VM's portal reaching another VM (OpenURI's target): looked up at call time, so it sees that VM's current link.
  const otherVm = (name: string) => {
    const s = sessions.get(name);
    return s && { label: s.vm.label, guest: s.guest };
  };
  const folderStore = new FolderStore(opts.folderStore).load();
  // Each network's passt: its socket beside the VM's other sockets, its log beside virtiofsd's.
  const networkDirs = { runtime: opts.config.runtimeDir ?? path.join(runtimeDir(), 'xdp-vm'), logs: path.join(stateHome(), 'xdp-vm') };
  const helperProblem = cachedHelperProblem();
  const usb = new HostUsb({ policy, consent, nextRequestId, log, helper: () => HelperClient.connect(), helperProblem, runtimeDir: networkDirs.runtime });
  for (const vm of vmConfigs(opts.config)) sessions.set(vm.name, new VmSession(vm, { hostBus, docs, log, nextRequestId, policy, flood, consent, halves, otherVm, networkDirs, usb, helperProblem }));

  const stoppers: (() => Promise<void> | void)[] = [];
  try {
    if (opts.shares !== false) stoppers.push(...(await startShares(opts.config, sessions, docs)));
    if (opts.shares !== false) stoppers.push(...(await startFolders(opts.config, sessions, folderStore, log.child({ component: 'folders' }))));
    stoppers.push(...(await startDevices(sessions)));
    stoppers.push(watchHostUsb(usb, log.child({ component: 'usb' })));
    await usb.reclaimExported();
    stoppers.push(usb.pollProviders());
    retireLeftoverVirtiofsds(docs, new Set(sessions.keys()), log.child({ component: 'removed-vms' }));
    stoppers.push(...(await startTransports(sessions, log)));
    stoppers.push(exportControl(hostBus, sessions, docs, folderStore, usb));
    await hostBus.requestName(CONTROL_BUS_NAME);
  } catch (err) {
    for (const stop of stoppers.reverse()) await stop();
    await policy.close();
    hostBus.close();
    throw err;
  }
  log.info({ vms: [...sessions.keys()], documents: docs.mountPoint }, 'host daemon ready');
  const busGone = new Promise<void>((resolve) =>
    hostBus.onDisconnect(() => {
      // Nothing works without the bus (the document store, the dialogs, the control interface): say so and stop.
      log.error('the session bus connection is gone; stopping');
      resolve();
    }),
  );
  return {
    sessions,
    docs,
    busGone,
    async stop() {
      // Before the guests go: their USB/IP imports are undone while they can still be asked.
      await usb.stopUsbip();
      for (const s of sessions.values()) s.close('host daemon stopping');
      usb.close();
      for (const stop of stoppers.reverse()) await stop();
      flood.close();
      await policy.close();
      hostBus.close();
      log.info('host daemon stopped');
    },
  };
}

async function startShares(config: Config, sessions: Map<string, VmSession>, docs: DocumentStore) {
  const binary = requireProgram('virtiofsd', config.virtiofsd);
  const dir = config.runtimeDir ?? path.join(runtimeDir(), 'xdp-vm');
  const stoppers: (() => Promise<void>)[] = [];
  for (const s of sessions.values()) {
    const share = new VmShare({
      vm: s.vm,
      id: SHARE_ID,
      tag: s.vm.share.tag,
      what: 'the document share',
      virtiofsd: {
        vm: s.vm.name,
        binary,
        source: docs.viewOf(s.vm.name),
        socket: s.vm.share.socket ?? path.join(dir, `${s.vm.name}-doc.sock`),
        cache: s.vm.share.cache,
        logFile: path.join(stateHome(), 'xdp-vm', `virtiofsd-${s.vm.name}.log`),
      },
      log: s.log.child({ component: 'share' }),
      ...(s.devices ? { devices: s.devices } : {}),
      wanted: async () => (await docs.list(s.vm.name)).length > 0,
      askGuestToUnmount: () => s.askGuestToUnmount(),
    });
    s.share = share;
    await share.start();
    stoppers.push(async () => share.close());
  }
  return stoppers;
}

/**
 * Each VM's folder shares from the store, served again: a virtiofsd each
 * (adopted if one still serves), plugged in when the VMM is reachable. A
 * broken store, or one share that cannot be served, is said loudly and the
 * rest go on.
 */
async function startFolders(config: Config, sessions: Map<string, VmSession>, store: FolderStore, log: Logger) {
  const binary = requireProgram('virtiofsd', config.virtiofsd);
  const dir = config.runtimeDir ?? path.join(runtimeDir(), 'xdp-vm');
  if (store.problem) log.error(`FOLDER SHARES NOT SERVED: ${store.problem}`);
  for (const s of sessions.values()) {
    const folders = new VmFolders({
      vm: s.vm,
      devices: s.devices,
      virtiofsd: { binary, dir, logDir: path.join(stateHome(), 'xdp-vm') },
      log: s.log,
      guest: { mount: (share) => s.askGuestAboutFolder('mount', share), unmount: (share) => s.askGuestAboutFolder('unmount', share) },
    });
    s.folders = folders;
    for (const share of store.of(s.vm.name)) {
      await folders.add(share, { strict: false }).catch((err: Error) => s.log.error({ share: share.name, err: err.message }, 'could not serve the folder share'));
    }
  }
  const orphans = store.all().filter((f) => !sessions.has(f.vm));
  if (orphans.length) log.warn({ shares: orphans.map((f) => `${f.vm}/${f.name}`) }, 'folder shares of VMs that are not configured are kept in the store and not served');
  return [async () => {
    for (const s of sessions.values()) s.folders?.close();
  }];
}

/** Each VM's one VMM connection, after its share listens for it. */
async function startDevices(sessions: Map<string, VmSession>) {
  const stoppers: (() => Promise<void>)[] = [];
  for (const s of sessions.values()) {
    const devices = s.devices;
    if (!devices) continue;
    await devices.start();
    stoppers.push(() => devices.close());
  }
  return stoppers;
}

async function startTransports(sessions: Map<string, VmSession>, log: Logger) {
  const stoppers: (() => Promise<void> | void)[] = [];
  const byCid = new Map<number, VmSession>();
  let vsockPort: number | undefined;
  for (const s of sessions.values()) {
    const t = s.vm.transport;
    if (t.type === 'hybrid-vsock') {
      const server = await listenHybridVsock(t.socket, t.port, (sock) => s.attach(sock, `${t.socket}_${t.port}`));
      stoppers.push(() => closeServer(server));
    } else if (t.type === 'virtio-serial') {
      const connector = new SerialConnector(t.socket);
      connector.on('link', (sock: net.Socket) => s.attach(sock, t.socket));
      connector.start();
      stoppers.push(() => connector.stop());
    } else {
      byCid.set(t.cid, s);
      vsockPort = t.port;
    }
  }
  if (vsockPort !== undefined) {
    const { VsockServer } = await import('../transport/af-vsock.js');
    const server = new VsockServer();
    server.on('connection', (sock) => {
      const s = byCid.get(sock.remote.cid);
      if (s) return void s.attach(sock, `vsock cid ${sock.remote.cid}`);
      log.warn({ cid: sock.remote.cid }, 'refused a vsock connection from a CID that no configured VM has');
      sock.destroy();
    });
    await server.listen(vsockPort);
    stoppers.push(() => server.close());
  }
  return stoppers;
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}
