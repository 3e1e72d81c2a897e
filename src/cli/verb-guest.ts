import { BACKEND_BUS_NAME, resolveGuestLink, startGuestBackend } from '../guest/backend.js';
import { parse, sessionBusAddress, untilSignal, type Verb } from './common.js';

const usage = `Usage: xdp-vm guest [--transport SPEC]

Run the guest backend (${BACKEND_BUS_NAME}) on the guest's session bus.
It is normally started by D-Bus activation when an app opens a file dialog.

  --transport SPEC   how to reach the host:
                       vsock:<cid>:<port>   AF_VSOCK (the host is CID 2)
                       serial:<device>      a virtio-serial port
                       unix:<path>          a Unix socket
                     default: $XDP_VM_TRANSPORT, else
                     /dev/virtio-ports/io.github.xdp_vm.portal if present,
                     else vsock:2:5000`;

export const guestVerb: Verb = {
  name: 'guest',
  usage,
  async run(argv) {
    const { values } = parse(argv, { transport: { type: 'string' } }, usage);
    if (values.help) return console.log(usage), 0;
    const backend = await startGuestBackend({ busAddress: sessionBusAddress(), spec: resolveGuestLink(values.transport) });
    await Promise.race([untilSignal(), backend.busGone]);
    backend.stop();
    return 0;
  },
};
