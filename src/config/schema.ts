import path from 'node:path';
import { z } from 'zod';
import { OPEN_URI_SCHEMES } from '../../portals/open-uri/uri.js';

/** The host's config file: which VMs exist, how each one connects, and its share. */
export const VmName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,30}$/, 'must be 1-31 characters of lowercase letters, digits and "-", starting with a letter');
export type VmName = z.infer<typeof VmName>;

const AbsolutePath = z.string().min(1).max(4000).refine((p) => path.isAbsolute(p), 'must be an absolute path');
const Port = z.number().int().min(1).max(0xfffffffe);

export const DEFAULT_PORT = 5000;
export const DEFAULT_SERIAL_PORT_NAME = 'io.github.xdp_vm.portal';

export const Transport = z.discriminatedUnion('type', [
  z
    .object({
      type: z.literal('hybrid-vsock'),
      /** The VMM's vsock socket; guest connections to `port` arrive on `<socket>_<port>`. */
      socket: AbsolutePath,
      port: Port.default(DEFAULT_PORT),
    })
    .strict(),
  z
    .object({
      type: z.literal('vsock'),
      /** The guest CID: accepted peers with this CID are this VM. */
      cid: z.number().int().min(3).max(0xfffffffe),
      port: Port.default(DEFAULT_PORT),
    })
    .strict(),
  z
    .object({
      type: z.literal('virtio-serial'),
      /** QEMU's chardev server socket behind the guest's virtserialport. */
      socket: AbsolutePath,
    })
    .strict(),
]);
export type Transport = z.infer<typeof Transport>;

export const Vmm = z.discriminatedUnion('type', [
  z.object({ type: z.literal('none') }).strict(),
  z.object({ type: z.literal('qmp'), socket: AbsolutePath }).strict(),
  z.object({ type: z.literal('libvirt'), domain: z.string().min(1).max(255), uri: z.string().default('qemu:///system') }).strict(),
  z.object({ type: z.literal('cloud-hypervisor'), socket: AbsolutePath }).strict(),
]);
export type Vmm = z.infer<typeof Vmm>;

export const Share = z
  .object({
    /** Where the guest mounts the VM's document share; returned URIs point here. */
    guestMount: AbsolutePath.default('/run/xdp-vm/doc'),
    /** The virtio-fs tag the guest mounts. */
    tag: z.string().regex(/^[A-Za-z0-9_.-]{1,36}$/, 'must be 1-36 characters of letters, digits, "_", "." and "-"').default('xdp-vm-doc'),
    /** virtiofsd's vhost-user socket; defaults to $XDG_RUNTIME_DIR/xdp-vm/<vm>-doc.sock. */
    socket: AbsolutePath.optional(),
    /** Guest-side caching. "none" keeps revocation immediate; see README. */
    cache: z.enum(['none', 'auto', 'always']).default('none'),
  })
  .strict();
export type Share = z.infer<typeof Share>;

export const Vm = z
  .object({
    label: z.string().min(1).max(64).optional(),
    color: z.string().regex(/^#[0-9a-fA-F]{6}$/, 'must be a colour like #3465a4').default('#888a85'),
    tags: z.array(z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'must be lowercase letters, digits and "-"')).max(16).default([]),
    transport: Transport,
    vmm: Vmm.default({ type: 'none' }),
    share: Share.default(Share.parse({})),
    /**
     * `provider`: this VM owns USB controllers, as Qubes' sys-usb does: the
     * devices plugged into it are offered to the other VMs, each passed on
     * by USB/IP over the two VMs' links, through the host and its consent.
     */
    usb: z.object({ provider: z.boolean().default(false) }).strict().default({ provider: false }),
  })
  .strict();
export type Vm = z.infer<typeof Vm>;

/** Flood control: past these, a VM's requests get response 2 at once, with no dialog. */
export const FloodLimits = z
  .object({
    /** Most requests one VM may have open at once. */
    maxPending: z.number().int().min(1).max(1000).default(4),
    /** Most requests one VM may have admitted within the window. */
    maxRecent: z.number().int().min(1).max(100_000).default(30),
    /** The sliding window, in seconds. */
    windowSeconds: z.number().int().min(1).max(86_400).default(60),
  })
  .strict();
export type FloodLimits = z.infer<typeof FloodLimits>;

/**
 * Named networks a VM may join (portals/network). A discriminated union on
 * `type`, so each kind carries only what it needs: `user` (passt, no
 * privileges: outbound through the host's own connection, and port forwards
 * from the host's loopback to the guest), `bridge` (an existing host bridge;
 * taps come from the privileged helper) and `vm-only` (a bridge the helper
 * creates, with no uplink).
 */
export const NetworkName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,14}$/, 'a network name is 1-15 characters of lowercase letters, digits and "-", starting with a letter');
export type NetworkName = z.infer<typeof NetworkName>;

const NetworkDescription = z.string().min(1).max(120).regex(/^[^\x00-\x1f\x7f]*$/, 'must be one line of text').optional();
/** Host ports are bound by passt, which runs as the user: no privileged ports. */
const HostPort = z.number().int().min(1024, 'a host port must be 1024 or more: lower ports need privileges, and passt runs as you').max(65535, 'a port is at most 65535');
const GuestPort = z.number().int().min(1, 'a port is 1 to 65535').max(65535, 'a port is at most 65535');

export const PortForward = z
  .object({
    /** Bound on the host's loopback (127.0.0.1) only: nothing outside the host reaches it. */
    host: HostPort,
    guest: GuestPort,
    protocol: z.literal('tcp', 'only "tcp" forwards are supported').default('tcp'),
  })
  .strict();
export type PortForward = z.infer<typeof PortForward>;

const BridgeName = z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'a bridge name is 1-15 letters, digits, "_", "." or "-"');

export const Network = z.discriminatedUnion('type', [
  z
    .object({
      type: z.literal('user'),
      description: NetworkDescription,
      forwards: z.array(PortForward).max(32, 'at most 32 forwards per network').default([]),
    })
    .strict(),
  z
    .object({
      type: z.literal('bridge'),
      description: NetworkDescription,
      /** An existing host bridge, e.g. virbr0 or br0. */
      bridge: BridgeName,
    })
    .strict(),
  z
    .object({
      type: z.literal('vm-only'),
      description: NetworkDescription,
      /** The bridge the helper creates on first use; default xdpvm-NAME. Its address is the admin's, in helper.conf. */
      bridge: BridgeName.optional(),
    })
    .strict(),
], { error: (issue) => (issue.code === 'invalid_union' ? 'a network\'s type is "user", "bridge" or "vm-only"' : undefined) });
export type Network = z.infer<typeof Network>;

/** The host bridge a bridge or vm-only network's taps go on; a vm-only network without one names its own. */
export function bridgeOf(name: NetworkName, net: Extract<Network, { type: 'bridge' | 'vm-only' }>): string {
  return net.bridge ?? `xdpvm-${name}`;
}
export type NetworkType = Network['type'];
export type Networks = Record<NetworkName, Network>;

/** Where a link goes: "host" (the host's default handler), or the name of another configured VM. */
export const OPEN_URI_HOST = 'host';
export const OpenUriTarget = z.union([z.literal(OPEN_URI_HOST), VmName]);
/** One VM's link targets, per scheme; a scheme left out opens on the host. */
export const OpenUriTargets = z.strictObject(Object.fromEntries(OPEN_URI_SCHEMES.map((s) => [s, OpenUriTarget.optional()])) as Record<(typeof OPEN_URI_SCHEMES)[number], z.ZodOptional<typeof OpenUriTarget>>);
export type OpenUriTargets = z.infer<typeof OpenUriTargets>;

export const Config = z
  .object({
    vms: z.record(VmName, Vm),
    /** The virtiofsd binary; default /usr/lib/qemu/virtiofsd, else virtiofsd on PATH. */
    virtiofsd: AbsolutePath.optional(),
    /** Where per-VM virtiofsd sockets go by default. */
    runtimeDir: AbsolutePath.optional(),
    flood: FloodLimits.optional(),
    /** Where links from each VM open, by source VM and scheme (portals/open-uri); default: the host. */
    openUri: z.record(z.string(), OpenUriTargets).optional(),
    /** Networks a VM may join, by name (portals/network); default none. */
    networks: z.record(NetworkName, Network).optional(),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    const seen = new Map<string, string>();
    const claim = (key: string, vm: string, where: (string | number)[], what: string) => {
      const other = seen.get(key);
      if (other) ctx.addIssue({ code: 'custom', path: where, message: `${what} is already used by VM "${other}"` });
      else seen.set(key, vm);
    };
    for (const [name, vm] of Object.entries(cfg.vms)) {
      const t = vm.transport;
      if (t.type === 'vsock') claim(`cid:${t.cid}`, name, ['vms', name, 'transport', 'cid'], `CID ${t.cid}`);
      else if (t.type === 'hybrid-vsock') claim(`sock:${t.socket}_${t.port}`, name, ['vms', name, 'transport', 'socket'], `${t.socket}_${t.port}`);
      else claim(`sock:${t.socket}`, name, ['vms', name, 'transport', 'socket'], t.socket);
      if (vm.share.socket) claim(`share:${vm.share.socket}`, name, ['vms', name, 'share', 'socket'], vm.share.socket);
    }
    for (const [from, targets] of Object.entries(cfg.openUri ?? {})) {
      if (!Object.hasOwn(cfg.vms, from)) ctx.addIssue({ code: 'custom', path: ['openUri', from], message: `no VM "${from}" is configured: each key of openUri is the VM the links come from` });
      for (const [scheme, to] of Object.entries(targets)) {
        const where = ['openUri', from, scheme];
        if (to === undefined) continue;
        if (to === OPEN_URI_HOST && Object.hasOwn(cfg.vms, OPEN_URI_HOST)) ctx.addIssue({ code: 'custom', path: where, message: '"host" is ambiguous here: it means the host, and a VM is also named "host"; rename that VM to send links to it' });
        else if (to === from) ctx.addIssue({ code: 'custom', path: where, message: `links from "${from}" cannot target "${from}" itself: name another VM, or "host"` });
        else if (to !== OPEN_URI_HOST && !Object.hasOwn(cfg.vms, to)) ctx.addIssue({ code: 'custom', path: where, message: `no VM "${to}" is configured: a link target is "host" or a configured VM` });
      }
    }
    // One bridge is one network: two names for it would be one network asked about twice, under two answers.
    const bridges = new Map<string, string>();
    for (const [name, net] of Object.entries(cfg.networks ?? {})) {
      if (net.type === 'user') continue;
      const br = bridgeOf(name, net);
      if (br.length > 15) {
        ctx.addIssue({ code: 'custom', path: ['networks', name], message: `its default bridge name "${br}" is longer than the kernel's 15 characters: give it a "bridge"` });
        continue;
      }
      const other = bridges.get(br);
      if (other !== undefined) ctx.addIssue({ code: 'custom', path: ['networks', name, 'bridge'], message: `bridge ${br} is already network "${other}"` });
      else bridges.set(br, name);
    }
    // passt binds each forward on the host's loopback: two networks cannot both hold one port.
    const hostPorts = new Map<number, string>();
    for (const [name, net] of Object.entries(cfg.networks ?? {})) {
      if (net.type !== 'user') continue;
      net.forwards.forEach((f, i) => {
        const other = hostPorts.get(f.host);
        if (other !== undefined) ctx.addIssue({ code: 'custom', path: ['networks', name, 'forwards', i, 'host'], message: `host port ${f.host} is already forwarded by ${other === name ? 'this network' : `network "${other}"`}` });
        else hostPorts.set(f.host, name);
      });
    }
    const ports = new Set(Object.values(cfg.vms).flatMap((v) => (v.transport.type === 'vsock' ? [v.transport.port] : [])));
    if (ports.size > 1) ctx.addIssue({ code: 'custom', path: ['vms'], message: 'all "vsock" VMs must use the same port: the host listens on one AF_VSOCK port' });
  });
export type Config = z.infer<typeof Config>;

/** A VM as the rest of the daemon sees it: config plus its name and resolved defaults. */
export interface VmConfig extends Vm {
  name: VmName;
  label: string;
  /** Where this VM's links open, per scheme (the config's openUri entry for it); absent: all on the host. */
  openUri?: OpenUriTargets;
  /** Every configured network (the config's networks table): which this VM may join is the policy's. */
  networks?: Networks;
}

export function vmConfigs(cfg: Config): VmConfig[] {
  return Object.entries(cfg.vms).map(([name, vm]) => ({ ...vm, name, label: vm.label ?? name, ...(cfg.openUri?.[name] ? { openUri: cfg.openUri[name] } : {}), ...(cfg.networks ? { networks: cfg.networks } : {}) }));
}
