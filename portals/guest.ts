import type { Bus } from '../src/dbus/bus.js';
import type { HostLink } from '../src/guest/host-link.js';
import type { Logger } from '../src/log.js';
import { exportFileChooser } from './file-chooser/guest.js';
import type { PortalName } from './index.js';

/** The guest half of every portal: what the backend exports on the guest bus. */
export type ExportGuest = (bus: Bus, host: HostLink, log: Logger) => () => void;

export const GUEST_HALVES: Record<PortalName, ExportGuest> = {
  FileChooser: exportFileChooser,
};
