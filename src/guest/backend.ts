import { existsSync } from 'node:fs';
import { exportGuestHalves } from '../../portals/guest.js';
import { ALL_METHODS } from '../../portals/index.js';
import { DEFAULT_PORT } from '../config/schema.js';
import { Bus } from '../dbus/bus.js';
import { childLogger } from '../log.js';
import { methodTable } from '../protocol/methods.js';
import { DEFAULT_SERIAL_DEVICE, describeGuestLink, parseGuestLinkSpec, type GuestLinkSpec } from '../transport/guest-link.js';
import { VERSION } from '../version.js';
import { HostLink } from './host-link.js';
import { askMountAgent } from './mount-agent-client.js';
import { loadGuestConfig } from './guest-config.js';
import { ShareMount, ShareUnmount } from '../protocol/session.js';
import type { AnyHandler } from '../protocol/connection.js';

/**
 * The guest backend: a portal backend on the guest's session bus that owns
 * nothing and forwards every call to the host over one link.
 */
export const BACKEND_BUS_NAME = 'org.freedesktop.impl.portal.desktop.vm';
const VMADDR_CID_HOST = 2;

/** --transport, else $XDP_VM_TRANSPORT, else guest.json's, else the virtio-serial port if the VM has one, else vsock to the host. */
export function resolveGuestLink(explicit?: string): GuestLinkSpec {
  const spec = explicit ?? process.env.XDP_VM_TRANSPORT ?? loadGuestConfig().transport;
  if (spec) return parseGuestLinkSpec(spec);
  if (existsSync(DEFAULT_SERIAL_DEVICE)) return { kind: 'serial', device: DEFAULT_SERIAL_DEVICE };
  return { kind: 'vsock', cid: VMADDR_CID_HOST, port: DEFAULT_PORT };
}

export interface GuestBackend {
  link: HostLink;
  /** Resolves when the guest's session bus goes away. */
  busGone: Promise<void>;
  stop(): void;
}

export async function startGuestBackend(opts: { busAddress: string; spec: GuestLinkSpec }): Promise<GuestBackend> {
  const log = childLogger({ side: 'guest' });
  const bus = await Bus.connect(opts.busAddress);
  const link = new HostLink({
    spec: opts.spec,
    methods: methodTable(ALL_METHODS),
    handlers: new Map<string, AnyHandler>([
      [
        ShareUnmount.name,
        async () => {
          const r = await askMountAgent('unmount');
          return { unmounted: r.ok, detail: r.detail.slice(0, 300) };
        },
      ],
      [
        ShareMount.name,
        async () => {
          const r = await askMountAgent('mount');
          return { mounted: r.ok, detail: r.detail.slice(0, 300) };
        },
      ],
    ]),
    agent: { name: 'xdp-vm-guest', version: VERSION },
    log,
  });
  link.start();
  const unexport = await exportGuestHalves(bus, link, log);
  await bus.requestName(BACKEND_BUS_NAME);
  log.info({ link: describeGuestLink(opts.spec), name: BACKEND_BUS_NAME }, 'guest backend ready');
  const busGone = new Promise<void>((resolve) => bus.onDisconnect(resolve));
  return {
    link,
    busGone,
    stop() {
      unexport();
      link.stop();
      bus.close();
    },
  };
}
