import type { Duplex } from 'node:stream';
import { connectVsock } from '../../src/transport/af-vsock.js';
import { connectHybridVsock } from '../../src/transport/hybrid-vsock.js';
import { dialWhileAsked } from '../../src/usb/stream-pair.js';
import { VSOCK_RESERVED_BELOW, type UsbipChannel } from '../../src/usb/usbip.js';
import type { ChannelSpec } from '../../src/vmm/adapter.js';
import type { UsbVmLink } from './host-usb.js';

/**
 * The host's end of one USB/IP stream into a VM, over the VM's own link:
 *
 * - **a channel the VMM hot-plugs** (QEMU's virtserialport): the daemon
 *   listens, QEMU connects, and the guest's root agent relays the port to
 *   the kernel. Used wherever the VMM can, since it needs nothing more of
 *   the VM's config.
 * - **vsock**, for a VM whose link to us is vsock: hybrid vsock through the
 *   VMM's Unix socket (cloud-hypervisor, Firecracker) or AF_VSOCK to the
 *   guest's CID (vhost-vsock: crosvm, QEMU, libvirt). The root agent listens on a reserved
 *   port (below 1024: only root in the VM can bind it, so no user of the VM
 *   can stand in for the agent), and the daemon connects to it; the agent
 *   hands that connection itself to the kernel.
 *
 * Either way the daemon holds a plain byte stream, and the daemon's relay
 * between two VMs does not care which kind each side is.
 */
export interface UsbipEnd {
  /** What the VM's root agent is told (usbip.export / usbip.import). */
  channel: UsbipChannel;
  /** The host's stream, once the guest has its end; `asked` is the request that makes the guest take it. */
  connect(asked: Promise<unknown>): Promise<Duplex>;
  /** Take the channel down (the stream itself is the relay's to end). */
  close(): Promise<void>;
}

/** The reserved vsock ports used for USB/IP, one per stream of a VM in use: the top half of the reserved range. */
const VSOCK_FIRST = VSOCK_RESERVED_BELOW / 2;
/** One try at connecting to the agent's port; the agent listens within its request's round trip. */
const DIAL_MS = 2000;
const RETRY_MS = 50;
const CONNECT_MS = 15_000;

/** Why `link`'s VM cannot carry a USB/IP stream now, in words that name `role`; undefined when it can. */
export function usbipEndProblem(link: UsbVmLink, role: string): string | undefined {
  const t = link.vm.transport.type;
  if (!link.devices?.vmm?.channels && t !== 'vsock' && t !== 'hybrid-vsock') {
    const vmm = link.devices?.vmm ? `runs on ${link.devices.vmm.kind}, which cannot hot-plug the byte channel USB/IP rides on` : `has no VMM the host can reach (${link.devices?.detail ?? 'no "vmm" in its config'})`;
    return `VM "${link.vm.name}" (${role}) ${vmm}, and its link to the host is ${t}, not vsock: USB/IP needs one or the other`;
  }
  if (!link.guest()) return `VM "${link.vm.name}" (${role}) has no guest side connected, and its root agent does the USB/IP`;
  return undefined;
}

/**
 * Reserved vsock ports handed out per VM, so two streams being set up in
 * one VM never share one. Each VM's next port follows its last, round the
 * range, so a port something else in the VM holds fails one attach, not
 * every one after it.
 */
export class VsockPorts {
  private readonly used = new Map<string, Set<number>>();
  private readonly next = new Map<string, number>();

  take(vm: string): number {
    const used = this.used.get(vm) ?? new Set<number>();
    const span = VSOCK_RESERVED_BELOW - VSOCK_FIRST;
    const from = this.next.get(vm) ?? VSOCK_FIRST;
    for (let i = 0; i < span; i++) {
      const p = VSOCK_FIRST + ((from - VSOCK_FIRST + i) % span);
      if (used.has(p)) continue;
      used.add(p);
      this.used.set(vm, used);
      this.next.set(vm, p + 1 < VSOCK_RESERVED_BELOW ? p + 1 : VSOCK_FIRST);
      return p;
    }
    throw new Error(`VM "${vm}" has ${used.size} USB/IP streams already, which is as many as it can have`);
  }

  give(vm: string, port: number): void {
    this.used.get(vm)?.delete(port);
  }
}

/** The end for `link`'s VM: its VMM's channel where it has one, else its vsock. */
export async function openUsbipEnd(link: UsbVmLink, spec: ChannelSpec, ports: VsockPorts): Promise<UsbipEnd> {
  const channels = link.devices?.vmm?.channels;
  if (channels) {
    const stream = await channels.openChannel(spec);
    return { channel: { port: spec.name }, connect: () => Promise.resolve(stream), close: () => channels.closeChannel(spec.id) };
  }
  const t = link.vm.transport;
  if (t.type !== 'vsock' && t.type !== 'hybrid-vsock') throw new Error(usbipEndProblem(link, 'the VM') ?? `VM "${link.vm.name}" has no link for USB/IP`);
  const vm = link.vm.name;
  const port = ports.take(vm);
  const dial = (): Promise<Duplex> => (t.type === 'vsock' ? connectVsock(t.cid, port, { timeoutMs: DIAL_MS }) : connectHybridVsock(t.socket, port, { timeoutMs: DIAL_MS }));
  let stream: Duplex | undefined;
  let closed = false;
  return {
    channel: { vsockPort: port },
    connect: async (asked) => {
      stream = await dialWhileAsked(dial, asked, `vsock port ${port} of VM "${vm}"`, { timeoutMs: CONNECT_MS, retryMs: RETRY_MS });
      if (closed) stream.destroy();
      return stream;
    },
    close: () => {
      closed = true;
      stream?.destroy();
      ports.give(vm, port);
      return Promise.resolve();
    },
  };
}
