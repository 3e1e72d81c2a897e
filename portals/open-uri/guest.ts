import { askHost } from '../ask-host.js';
import { PortalError, variant, type Bus } from '../../src/dbus/bus.js';
import { loadInterface } from '../../src/dbus/interfaces.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import type { Params } from '../../src/protocol/methods.js';
import { OPEN_URI_INTERFACE, OPEN_URI_PATH } from './handler.js';
import { launchHere } from './launch.js';
import { OpenUriLaunch, OpenUriOpen } from './schema.js';
import { checkUri } from './uri.js';

/**
 * The guest half of OpenURI, both ways:
 * - out: io.github.xdp_vm.OpenUri1.OpenURI on the guest bus, which the
 *   "Open on host" handler (`xdp-vm open-uri`) calls; the link goes to the
 *   host, which decides where, and whether, it opens;
 * - in: openUri.launch from the host, when this VM is the target of another
 *   VM's link: it opens with this VM's own handler (launch.ts).
 */
const VERSION = 1;

export function exportOpenUri(bus: Bus, host: HostLink, log: Logger): () => void {
  const iface = loadInterface(OPEN_URI_INTERFACE);
  const olog = log.child({ portal: 'OpenURI' });
  let serving = true;

  // HostLink has no way to drop a handler: once unexported, this one refuses.
  host.handle(OpenUriLaunch.name, async (params) => {
    if (!serving) throw new ProtocolError('denied', 'it is not served OpenURI now');
    return launchHere((params as Params<typeof OpenUriLaunch>).uri, olog);
  });

  const unexport = bus.export(
    OPEN_URI_PATH,
    iface,
    {
      OpenURI: async (args) => {
        const checked = checkUri(String(args[0]));
        if (!checked.ok) throw new PortalError('InvalidArgument', checked.problem);
        const r = await askHost(host, OpenUriOpen, { uri: checked.uri.href });
        olog.info({ scheme: checked.uri.scheme, opened: r.opened, where: r.where }, 'a link went to the host');
        return [r.opened, r.where];
      },
    },
    { version: () => variant('u', VERSION) },
  );
  return () => {
    serving = false;
    unexport();
  };
}
