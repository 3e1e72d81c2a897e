import type { VmConfig } from '../src/config/schema.js';
import type { Bus } from '../src/dbus/bus.js';
import type { DocumentStore } from '../src/host/documents.js';
import type { FloodControl } from '../src/host/flood.js';
import type { ConsentAsker } from '../src/host/consent.js';
import type { Logger } from '../src/log.js';
import type { PolicyDecider } from '../src/policy/policy.js';
import type { AnyHandler } from '../src/protocol/connection.js';
import type { Params } from '../src/protocol/methods.js';
import { handleOpenDialog } from './file-chooser/host.js';
import { OpenDialog } from './file-chooser/schema.js';
import { PORTALS, type PortalName } from './index.js';

/** The host half of every portal: its handlers for one VM. */
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
  /** Ask for consent the Qubes way (policy row, else the host dialog); FileChooser's own dialog is its consent. */
  consent: ConsentAsker;
}

export const HOST_HALVES: Record<PortalName, (deps: HostPortalDeps) => Record<string, AnyHandler>> = {
  FileChooser: (deps) => ({
    // The connection has validated `params` against OpenDialog.params already.
    [OpenDialog.name]: (params, ctx) => {
      const requestId = deps.nextRequestId();
      return handleOpenDialog(params as Params<typeof OpenDialog>, ctx, { ...deps, requestId, log: deps.log.child({ portal: 'FileChooser', request: requestId }) });
    },
  }),
};

/** Every portal's host handlers for one VM, each behind that VM's flood gate. */
export function hostHandlersFor(deps: HostPortalDeps): [string, AnyHandler][] {
  return PORTALS.flatMap((p) =>
    Object.entries(HOST_HALVES[p.name](deps)).map(([method, handler]): [string, AnyHandler] => [method, deps.flood.guard(deps.vm.name, p.name, handler, deps.nextRequestId)]),
  );
}
