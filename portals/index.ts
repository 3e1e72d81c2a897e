import type { VmConfig } from '../src/config/schema.js';
import type { Bus } from '../src/dbus/bus.js';
import type { DocumentStore } from '../src/host/documents.js';
import type { FloodControl } from '../src/host/flood.js';
import type { HostLink } from '../src/guest/host-link.js';
import type { Logger } from '../src/log.js';
import type { PolicyDecider } from '../src/policy/policy.js';
import type { AnyHandler } from '../src/protocol/connection.js';
import type { MethodDescriptor, Params } from '../src/protocol/methods.js';
import { SESSION_METHODS } from '../src/protocol/session.js';
import { exportFileChooser } from './file-chooser/guest.js';
import { handleOpenDialog } from './file-chooser/host.js';
import { FILE_CHOOSER_METHODS, OpenDialog } from './file-chooser/schema.js';

/**
 * Every portal, end to end, in one flat table: the protocol methods it adds,
 * what the guest backend exports, and the host handlers for one VM.
 */
export interface HostPortalDeps {
  vm: VmConfig;
  hostBus: Bus;
  docs: DocumentStore;
  log: Logger;
  /** A fresh daemon-unique id for each request. */
  nextRequestId: () => string;
  /** The allow/deny/ask rows; each portal consults it before asking the user. */
  policy: PolicyDecider;
  /** Shared by every portal: wraps each handler in hostHandlersFor. */
  flood: FloodControl;
  /** Make the VM's share reachable in the guest (plug it in, have it mounted) before answering with paths in it. */
  ensureShare: () => Promise<void>;
}

export interface PortalEntry {
  /** The impl.portal interface name, as listed in vm.portal. */
  name: string;
  interface: string;
  methods: readonly MethodDescriptor[];
  exportGuest(bus: Bus, host: HostLink, log: Logger): () => void;
  hostHandlers(deps: HostPortalDeps): Record<string, AnyHandler>;
}

export const PORTALS: readonly PortalEntry[] = [
  {
    name: 'FileChooser',
    interface: 'org.freedesktop.impl.portal.FileChooser',
    methods: FILE_CHOOSER_METHODS,
    exportGuest: exportFileChooser,
    hostHandlers: (deps) => ({
      // The connection has validated `params` against OpenDialog.params already.
      [OpenDialog.name]: (params, ctx) => {
        const requestId = deps.nextRequestId();
        return handleOpenDialog(params as Params<typeof OpenDialog>, ctx, { ...deps, requestId, log: deps.log.child({ portal: 'FileChooser', request: requestId }) });
      },
    }),
  },
];

/** Every portal's host handlers for one VM, each behind that VM's flood gate. */
export function hostHandlersFor(deps: HostPortalDeps): [string, AnyHandler][] {
  return PORTALS.flatMap((p) =>
    Object.entries(p.hostHandlers(deps)).map(([method, handler]): [string, AnyHandler] => [method, deps.flood.guard(deps.vm.name, p.name, handler, deps.nextRequestId)]),
  );
}

export const ALL_METHODS: readonly MethodDescriptor[] = [...SESSION_METHODS, ...PORTALS.flatMap((p) => p.methods)];
