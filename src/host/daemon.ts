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
import { VmShare } from './vm-share.js';
import { VmSession } from './vm-session.js';
import { loadHostHalves } from '../../portals/host.js';
import { retireLeftoverVirtiofsds } from './removed-vms.js';

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
  for (const vm of vmConfigs(opts.config)) sessions.set(vm.name, new VmSession(vm, { hostBus, docs, log, nextRequestId, policy, flood, consent, halves }));

  const stoppers: (() => Promise<void> | void)[] = [];
  try {
    if (opts.shares !== false) stoppers.push(...(await startShares(opts.config, sessions, docs)));
    stoppers.push(...(await startDevices(sessions)));
    retireLeftoverVirtiofsds(docs, new Set(sessions.keys()), log.child({ component: 'removed-vms' }));
    stoppers.push(...(await startTransports(sessions, log)));
    stoppers.push(exportControl(hostBus, sessions, docs));
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
      for (const s of sessions.values()) s.close('host daemon stopping');
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
      hasGrants: async () => (await docs.list(s.vm.name)).length > 0,
      askGuestToUnmount: () => s.askGuestToUnmount(),
    });
    s.share = share;
    await share.start();
    stoppers.push(async () => share.close());
  }
  return stoppers;
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
