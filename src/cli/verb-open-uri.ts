import { OPEN_URI_INTERFACE, OPEN_URI_PATH } from '../../portals/open-uri/handler.js';
import { checkUri } from '../../portals/open-uri/uri.js';
import { Bus, BusCallError } from '../dbus/bus.js';
import { BACKEND_BUS_NAME } from '../guest/backend.js';
import { parse, sessionBusAddress, UsageError, type Verb } from './common.js';

const usage = `Usage: xdp-vm open-uri URI

Run inside a VM: hand an http, https or mailto link to the host, which opens
it where links from this VM open (on the host, or in another VM), if its
policy, or the user when it asks, allows it. This is what the "Open on host"
handler that install-guest registers runs. It asks the guest backend
(${BACKEND_BUS_NAME}, started by D-Bus activation) on this session bus.`;

/** The user may be shown a question on the host: give them time to answer it. */
const CALL_MS = 150_000;

/** D-Bus errors that mean the backend does not offer links now, in words. */
function explain(err: BusCallError): string {
  if (/UnknownObject|UnknownMethod|UnknownInterface/.test(err.errorName)) return 'the host does not serve OpenURI to this VM now (a deny row for all its links, or no host reached yet)';
  if (/ServiceUnknown|NameHasNoOwner|Spawn/.test(err.errorName)) return `the guest backend (${BACKEND_BUS_NAME}) is not installed or would not start: run xdp-vm install-guest`;
  return err.message.replace(/^\w+: [\w.]+: /, '');
}

export const openUriVerb: Verb = {
  name: 'open-uri',
  usage,
  async run(argv) {
    const { values, positionals } = parse(argv, {}, usage);
    if (values.help) return console.log(usage), 0;
    if (positionals.length !== 1) throw new UsageError(`give exactly one link\n\n${usage}`);
    const checked = checkUri(positionals[0]!);
    if (!checked.ok) throw new UsageError(`not opened: ${checked.problem}`);
    const bus = await Bus.connect(sessionBusAddress());
    try {
      const [, where] = (await bus.call({ destination: BACKEND_BUS_NAME, path: OPEN_URI_PATH, interface: OPEN_URI_INTERFACE, member: 'OpenURI', signature: 's', body: [checked.uri.href], timeoutMs: CALL_MS })) as [string, string];
      console.log(`opened ${checked.uri.scheme === 'mailto' ? 'the email' : checked.uri.host} on ${where === 'the host' ? 'the host' : `VM ${where}`}`);
      return 0;
    } catch (err) {
      if (err instanceof BusCallError) throw new Error(`not opened: ${explain(err)}`);
      throw err;
    } finally {
      bus.close();
    }
  },
};
