import { loadConfig, defaultConfigPath } from '../config/load.js';
import { startHostDaemon } from '../host/daemon.js';
import { parse, sessionBusAddress, untilSignal, type Verb } from './common.js';

const usage = `Usage: xdp-vm host [--config FILE] [--no-shares]

Run the host daemon on the session bus: listen on every configured VM's
transport, show the host dialogs, keep the per-VM document views, and run
one virtiofsd per VM share.

  --config FILE   the VM config (default: ${defaultConfigPath()})
  --no-shares     do not start virtiofsd (no VM will see its files)`;

export const hostVerb: Verb = {
  name: 'host',
  usage,
  async run(argv) {
    const { values } = parse(argv, { config: { type: 'string' }, 'no-shares': { type: 'boolean' } }, usage);
    if (values.help) return console.log(usage), 0;
    const config = loadConfig(values.config);
    const daemon = await startHostDaemon({ config, busAddress: sessionBusAddress(), shares: !values['no-shares'] });
    await Promise.race([untilSignal(), daemon.busGone]);
    await daemon.stop();
    return 0;
  },
};
