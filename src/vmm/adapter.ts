import type { Duplex } from 'node:stream';
/**
 * What the host daemon needs from any VMM (QEMU over QMP, libvirt,
 * cloud-hypervisor), as capabilities: `shares` (virtiofs devices), `usb` and
 * `net`. Each attaches a device under the caller's id, detaches it, and
 * lists what the VM has (so a restarted daemon adopts what it left), and
 * every detach, asked for or not, is an event. A VMM that lacks a capability
 * simply has none, and `lackOf` says so in words naming the VMM; there are no
 * stubs. The daemon owns virtiofsd and the guest side; the adapter only
 * talks to the VMM.
 */

export interface ShareSpec {
  /** The caller's stable name for this share; the adapter derives its VMM ids from it. */
  id: string;
  /** The virtiofs tag the guest mounts. */
  tag: string;
  /** The vhost-user socket of a virtiofsd the caller has already started. */
  socketPath: string;
  /** Virtqueue size; QEMU's default is small for file I/O. */
  queueSize?: number;
}

export interface AttachedShare {
  id: string;
  tag: string;
  /** The VMM's own device id, for logs and for matching VMM events. */
  deviceId: string;
  /** Where the device went, e.g. the QEMU root port. */
  location: string | undefined;
}

export interface ShareInfo {
  /** Our share id when the device follows our naming; undefined for foreign devices. */
  id: string | undefined;
  tag: string;
  deviceId: string | undefined;
  location: string | undefined;
  /** True when this adapter instance attached it; false for shares the VM was started with. */
  attachedHere: boolean;
}

export interface DetachOptions {
  /**
   * Runs after the adapter has checked the share exists and before it asks the
   * VMM to unplug: the place to unmount in the guest. Unplugging a mounted share
   * leaves the guest with a dead mount.
   */
  beforeDetach?: () => Promise<void>;
  /** How long to wait for the VMM to confirm the unplug; default 10 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface AttachOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * One host USB device, passed through by the VMM's own USB emulation
 * (QEMU's usb-host, libvirt's hostdev). The caller has matched the device
 * (vendor, product and ID_SERIAL, src/usb/devices.ts) and names it by where
 * it is now: bus number and device address, which change on every replug.
 * The VMMs' own matching by vendor and product cannot tell two identical
 * devices apart, and neither has a serial property.
 */
export interface UsbSpec {
  id: string;
  vendorId: number;
  productId: number;
  /** busnum and devnum in sysfs: /dev/bus/usb/BBB/DDD. */
  hostBus: number;
  hostAddress: number;
  /**
   * The device node, opened read-write by the privileged helper (usb-open),
   * for a VMM that can take a descriptor (QEMU: add-fd, then usb-host's
   * hostdevice=/dev/fdset/N), so that it needs no access to /dev/bus/usb.
   * The adapter passes it on and never closes it; the caller does, once
   * attach has returned or failed.
   */
  fd?: number;
}

/**
 * Where a NIC's frames go: a tap the privileged helper has created and
 * handed to this user (bridge and vm-only networks), a stream socket a
 * user-mode network daemon (passt) listens on, which the VMM connects to, or
 * the VMM's own user-mode networking (QEMU's built-in slirp, which libvirt
 * also starts for `<interface type='user'>`).
 */
export type NetBackend =
  /**
   * `fd` is one queue of the tap, opened by the helper: QEMU and
   * cloud-hypervisor are handed it (SCM_RIGHTS) and need no privilege;
   * libvirt opens the tap by `tapName` itself (managed='no'). The caller
   * keeps and closes `fd`: the VMM holds its own copy once attached.
   */
  | { type: 'tap'; tapName: string; fd?: number }
  | { type: 'stream'; socketPath: string }
  /** `forwards`: TCP from 127.0.0.1:host on the host to the guest's port; none for outbound only. */
  | { type: 'user'; forwards: readonly { host: number; guest: number }[] };

/**
 * The user-mode networking a VMM can give a NIC, best first: `passt`, a
 * stream socket to a passt we start (NetBackend `stream`); `own`, the VMM's
 * own (NetBackend `user`), with `ownForwards` saying whether it takes port
 * forwards.
 */
export interface UserNetworking {
  modes: readonly ('passt' | 'own')[];
  ownForwards: boolean;
}

export interface NetSpec {
  id: string;
  backend: NetBackend;
  /** Unicast, locally administered, e.g. 02:5a:…; the VMM's own when absent. */
  mac?: string;
}

export type DeviceKind = 'share' | 'usb' | 'net';

export type VmmEvent =
  /** `expected` is false when the VMM or guest removed it without our asking. */
  | { type: 'device-detached'; kind: DeviceKind; id: string; deviceId: string; expected: boolean }
  | { type: 'vmm-gone'; reason: string };

export interface VmmEvents {
  subscribe(listener: (event: VmmEvent) => void): () => void;
  /** Events from now until the VMM is gone or `signal` aborts. */
  iterate(opts?: { signal?: AbortSignal }): AsyncIterableIterator<VmmEvent>;
}

/** A device attached by us, as the VMM knows it. */
export interface DeviceHandle {
  kind: DeviceKind;
  /** The caller's id. */
  id: string;
  /** The VMM's own device id, for logs and for matching VMM events. */
  deviceId: string;
  location: string | undefined;
}

/** A device the VM has: ours (`id` set, by our naming) or one it was started with. */
export interface DeviceInfo {
  kind: DeviceKind;
  id: string | undefined;
  deviceId: string | undefined;
  location: string | undefined;
}

export interface ShareCapability {
  attachShare(spec: ShareSpec, opts?: AttachOptions): Promise<AttachedShare>;
  detachShare(id: string, opts?: DetachOptions): Promise<void>;
  /** Every virtiofs device the VM has, including ones it was started with. */
  listShares(): Promise<ShareInfo[]>;
}

export interface UsbCapability {
  attachUsb(spec: UsbSpec, opts?: AttachOptions): Promise<DeviceHandle>;
  detachUsb(id: string, opts?: DetachOptions): Promise<void>;
  listUsb(): Promise<DeviceInfo[]>;
}

export interface NetCapability {
  readonly userNetworking: UserNetworking;
  attachNet(spec: NetSpec, opts?: AttachOptions): Promise<DeviceHandle>;
  detachNet(id: string, opts?: DetachOptions): Promise<void>;
  listNet(): Promise<DeviceInfo[]>;
}

/**
 * A raw byte channel into the VM, for a stream of the guest kernel's own
 * (USB/IP's URBs): QEMU's hot-plugged virtserialport. The guest's root
 * agent opens it by `name`; the host end is the stream `open` answers. Not a
 * capability a portal lists for the user: it serves one (Usb) underneath.
 */
export interface ChannelSpec {
  id: string;
  name: string;
  /** Where the VMM listens for the daemon's end: in the daemon's own 0700 runtime directory. */
  socketPath: string;
}

export interface ChannelCapability {
  openChannel(spec: ChannelSpec, opts?: AttachOptions): Promise<Duplex>;
  closeChannel(id: string, opts?: DetachOptions): Promise<void>;
}

export interface VmmCapabilities {
  shares?: ShareCapability;
  usb?: UsbCapability;
  net?: NetCapability;
}

export type CapabilityName = keyof VmmCapabilities;
export const CAPABILITY_NAMES: readonly CapabilityName[] = ['shares', 'usb', 'net'];

export type VmmKind = 'qemu' | 'cloud-hypervisor' | 'libvirt';

export interface VmmAdapter extends VmmCapabilities {
  readonly kind: VmmKind;
  /** Raw byte channels, where the VMM can hot-plug them. */
  readonly channels?: ChannelCapability;
  readonly events: VmmEvents;
  /** Stop talking to the VMM; the VM itself keeps running. */
  close(): Promise<void>;
}

const VMM_NAMES: Record<VmmKind, string> = { qemu: 'QEMU (QMP)', libvirt: 'libvirt', 'cloud-hypervisor': 'cloud-hypervisor' };
const CAPABILITY_WORDS: Record<CapabilityName, string> = { shares: 'hot-plug folder shares', usb: 'attach USB devices', net: 'hot-plug network cards' };

/** The capabilities an adapter has. */
export function capabilitiesOf(adapter: VmmCapabilities): CapabilityName[] {
  return CAPABILITY_NAMES.filter((c) => adapter[c] !== undefined);
}

/** Why `adapter` cannot do `capability`, in words naming the VMM; undefined when it can. */
export function lackOf(adapter: VmmAdapter, capability: CapabilityName): string | undefined {
  return adapter[capability] ? undefined : `this VM's VMM, ${VMM_NAMES[adapter.kind]}, cannot ${CAPABILITY_WORDS[capability]} through xdp-vm`;
}

export class VmmError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VmmError';
  }
}

/** Ids we hand to a VMM end up in QMP ids and QOM paths; keep them to a safe alphabet. */
export function assertSafeId(kind: string, id: string): void {
  if (!/^[A-Za-z][A-Za-z0-9_-]{0,47}$/.test(id)) {
    throw new VmmError(`${kind} id ${JSON.stringify(id)} must start with a letter and use only letters, digits, '-' and '_' (at most 48)`);
  }
}
