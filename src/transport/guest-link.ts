import net from 'node:net';
import type { Duplex } from 'node:stream';
import { DEFAULT_PORT, DEFAULT_SERIAL_PORT_NAME } from '../config/schema.js';

/**
 * Guest side: how the backend reaches the host. Written as a spec string so a
 * D-Bus activation file or a unit can carry it:
 *   vsock:<cid>:<port>    AF_VSOCK (CID 2 is the host)
 *   serial:<device>       a virtio-serial port, e.g. /dev/virtio-ports/io.github.xdp_vm.portal
 *   unix:<path>           a Unix socket (tests, and VMMs that forward vsock to Unix sockets)
 */
export type GuestLinkSpec =
  | { kind: 'vsock'; cid: number; port: number }
  | { kind: 'serial'; device: string }
  | { kind: 'unix'; path: string };

export const DEFAULT_SERIAL_DEVICE = `/dev/virtio-ports/${DEFAULT_SERIAL_PORT_NAME}`;

export function parseGuestLinkSpec(spec: string): GuestLinkSpec {
  const [kind, ...rest] = spec.split(':');
  const value = rest.join(':');
  if (kind === 'vsock') {
    const [cid, port] = value.split(':').map((n) => Number(n));
    if (!Number.isInteger(cid) || !Number.isInteger(port ?? DEFAULT_PORT)) throw new Error(`bad vsock spec "${spec}": expected vsock:<cid>:<port>`);
    return { kind, cid: cid!, port: port ?? DEFAULT_PORT };
  }
  if (kind === 'serial' && value.startsWith('/')) return { kind, device: value };
  if (kind === 'unix' && value.startsWith('/')) return { kind, path: value };
  throw new Error(`bad transport "${spec}": expected vsock:<cid>:<port>, serial:<device> or unix:<path>`);
}

export function describeGuestLink(spec: GuestLinkSpec): string {
  if (spec.kind === 'vsock') return `vsock CID ${spec.cid} port ${spec.port}`;
  if (spec.kind === 'serial') return `virtio-serial ${spec.device}`;
  return `unix ${spec.path}`;
}

export async function openGuestLink(spec: GuestLinkSpec, opts: { timeoutMs?: number } = {}): Promise<Duplex> {
  switch (spec.kind) {
    case 'unix':
      return new Promise((resolve, reject) => {
        const s = net.connect(spec.path);
        s.once('connect', () => (s.off('error', reject), resolve(s)));
        s.once('error', reject);
      });
    case 'serial': {
      const { openCharDevice } = await import('./af-vsock.js');
      return openCharDevice(spec.device);
    }
    case 'vsock': {
      const { connectVsock } = await import('./af-vsock.js');
      return connectVsock(spec.cid, spec.port, { timeoutMs: opts.timeoutMs ?? 5000 });
    }
  }
}
