import { existsSync } from 'node:fs';
import { GuestPortals } from '../../portals/guest.js';
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
import { FolderMount, FolderUnmount, ShareMount, ShareUnmount } from '../protocol/session.js';
import { guestPathOfFolder } from '../host/folders/spec.js';
import { addBookmark, removeBookmark } from './bookmarks.js';
import type { Logger } from '../log.js';
import { handleUsbipRequests } from '../../portals/usb/usbip-guest.js';

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

const FIRST_WELCOME_MS = 3000;

/** The host's portals from its first welcome, or undefined if none came in time. */
function waitForHost(link: HostLink, ms: number): Promise<string[] | undefined> {
  if (link.connected) return Promise.resolve(link.portals);
  return new Promise((resolve) => {
    const timer = setTimeout(() => (link.off('up', onUp), resolve(undefined)), ms);
    const onUp = (served?: string[]) => (clearTimeout(timer), resolve(served));
    link.once('up', onUp);
  });
}

/** The host asks the guest's mount agent, through us, to mount or unmount the share. */
function handleShareRequests(link: HostLink, log: Logger): void {
  link.handle(ShareUnmount.name, async () => {
    const r = await askMountAgent('unmount');
    return { unmounted: r.ok, detail: r.detail.slice(0, 300) };
  });
  link.handle(ShareMount.name, async () => {
    const r = await askMountAgent('mount');
    return { mounted: r.ok, detail: r.detail.slice(0, 300) };
  });
  // Folder shares: the root agent mounts, and this session's file chooser gets a bookmark (it is this user's sidebar).
  link.handle(FolderMount.name, async (params) => {
    const { name } = params as { name: string };
    const r = await askMountAgent(`mount-folder ${name}`);
    if (r.ok) bookmark(log, () => addBookmark(guestPathOfFolder(name), name));
    return { mounted: r.ok, detail: r.detail.slice(0, 300) };
  });
  link.handle(FolderUnmount.name, async (params) => {
    const { name } = params as { name: string };
    bookmark(log, () => removeBookmark(guestPathOfFolder(name)));
    const r = await askMountAgent(`unmount-folder ${name}`);
    return { unmounted: r.ok, detail: r.detail.slice(0, 300) };
  });
}

/** A bookmark is a convenience: failing to write one is said, and the share stays mounted. */
function bookmark(log: Logger, change: () => boolean): void {
  try {
    change();
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'could not update the file chooser\'s bookmarks');
  }
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
  const link = new HostLink({ spec: opts.spec, methods: methodTable(ALL_METHODS), agent: { name: 'xdp-vm-guest', version: VERSION }, log });
  handleShareRequests(link, log);
  handleUsbipRequests(link);
  const portals = new GuestPortals(bus, link, log);
  link.on('up', (served?: string[]) => void portals.serve(served));
  link.on('portals', (served: string[]) => void portals.serve(served));
  link.start();
  // The frontend calls us as soon as we own the name: by then export what the
  // host serves, or, if it cannot be reached yet, everything (it answers 2).
  const first = await waitForHost(link, FIRST_WELCOME_MS);
  await portals.serve(first);
  await bus.requestName(BACKEND_BUS_NAME);
  log.info({ link: describeGuestLink(opts.spec), name: BACKEND_BUS_NAME }, 'guest backend ready');
  const busGone = new Promise<void>((resolve) => bus.onDisconnect(resolve));
  return {
    link,
    busGone,
    stop() {
      portals.close();
      link.stop();
      bus.close();
    },
  };
}
