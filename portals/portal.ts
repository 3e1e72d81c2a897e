import type { z } from 'zod';
import type { VmConfig } from '../src/config/schema.js';
import type { Bus } from '../src/dbus/bus.js';
import type { HostLink } from '../src/guest/host-link.js';
import type { ConsentAsker } from '../src/host/consent.js';
import type { DocumentStore } from '../src/host/documents.js';
import type { FloodControl } from '../src/host/flood.js';
import type { Logger } from '../src/log.js';
import type { PolicyDecider } from '../src/policy/policy.js';
import type { VmNetworks } from './network/vm-networks.js';
import type { HostUsb } from './usb/host-usb.js';
import type { AnyHandler } from '../src/protocol/connection.js';
import type { MethodDescriptor, NotificationDescriptor, NotificationHandler, NotificationParams, Params, ResultOf } from '../src/protocol/methods.js';

/**
 * What one portal is, in one place: its folder under portals/ exports one of
 * these, and portals/index.ts lists them. Everything else that lists
 * portals (vm.portal, the guest install, policy tables, the CLI, the
 * daemon's handlers) derives from that list.
 */
export interface PortalDescriptor<Name extends string = string> {
  /** Its name in policy rows, audit lines and the CLI. */
  name: Name;
  /** The impl.portal interfaces its guest half exports; the guest install pins each to our backend. */
  interfaces: readonly string[];
  /** The protocol methods and notifications both halves share. */
  methods: readonly (MethodDescriptor | NotificationDescriptor)[];
  policy: PortalPolicy;
  /**
   * The portal limits its own rate, so the daemon's flood gate (sized for
   * dialogs: a few in flight, 30 a minute) does not count its requests, and
   * a chatty app cannot use up the budget a VM's file dialogs share.
   */
  ownRateLimit?: true;
  /** The halves, loaded on first use so a guest never loads host code; absent while the portal is policy rows only. */
  guest?: () => Promise<GuestHalf>;
  host?: () => Promise<HostHalf>;
}

export interface PortalPolicy {
  /** What a row's argument may be; a row without one applies to every request. */
  argument: z.ZodType<string>;
  /** The argument in words, for the CLI's help and its errors. */
  describeArgument: string;
  /** What happens when no row applies, in words, for `xdp-vm permissions show`: "Usb asks". */
  whenNoRow: string;
  /** How consent works for it, one sentence for `xdp-vm permissions --help`. */
  consent: string;
}

/** The guest half: exports its interfaces on the guest bus; returns the function that unexports them. */
export type GuestHalf = (bus: Bus, host: HostLink, log: Logger) => () => void;

/** What a half handles of what the other side sends: methods (answered) and notifications (not). */
export interface PortalHandlers {
  methods?: Record<string, AnyHandler>;
  notifications?: Record<string, NotificationHandler>;
}

/** The host half: its protocol handlers for one VM. */
export type HostHalf = (deps: HostPortalDeps) => PortalHandlers;

/** What the daemon gives every portal's host half, for one VM. */
export interface HostPortalDeps {
  vm: VmConfig;
  hostBus: Bus;
  docs: DocumentStore;
  log: Logger;
  /** A fresh daemon-unique id for each request. */
  nextRequestId: () => string;
  /** The allow/deny/ask rows; each portal consults it before asking the user. */
  policy: PolicyDecider;
  /** Shared by every portal: the daemon wraps each handler in it. */
  flood: FloodControl;
  /** Make the VM's share reachable in the guest (plug it in, have it mounted) before answering with paths in it. */
  ensureShare: () => Promise<void>;
  /** Ask for consent the Qubes way (policy row, else the host dialog). */
  consent: ConsentAsker;
  /** Tell the VM's guest something now (a host-to-guest notification); false when no guest is connected. */
  notify: <N extends NotificationDescriptor>(note: N, params: NotificationParams<N>) => boolean;
  /**
   * Another configured VM, by name, for a portal that hands it something the
   * user sent there (OpenURI's target VM); undefined for a name no VM has.
   */
  otherVm: (name: string) => OtherVm | undefined;
  /** The VM's networks (joined, joining, leaving), which its session owns; absent where a daemon serves none. */
  networks?: VmNetworks;
  /** The host's USB devices, which every VM shares; absent where a daemon serves none. */
  usb?: HostUsb;
}

/** Another VM as a host half may reach it: its label for dialogs, and its guest while one is connected. */
export interface OtherVm {
  label: string;
  guest: GuestPeer | undefined;
}

/** A connected guest, to be asked something (a host-to-guest method). */
export interface GuestPeer {
  request<M extends MethodDescriptor>(method: M, params: Params<M>, opts?: { signal?: AbortSignal }): Promise<ResultOf<M>>;
}

export function definePortal<const Name extends string>(p: PortalDescriptor<Name>): PortalDescriptor<Name> {
  return p;
}
