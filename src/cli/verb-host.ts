import { loadConfig, defaultConfigPath } from '../config/load.js';
import { startHostDaemon } from '../host/daemon.js';
import { UsageError, parse, sessionBusAddress, untilSignal, type Verb } from './common.js';

const usage = `Usage: xdp-vm host [--config FILE] [--no-shares] [--dialog auto|gui|tty]

Run the host daemon on the session bus: listen on every configured VM's
transport, show the host dialogs, keep the per-VM document views, and run
one virtiofsd per VM share.

  --config FILE   the VM config (default: ${defaultConfigPath()})
  --no-shares     do not start virtiofsd (no VM will see its files)
  --dialog MODE   how consent questions are asked: gui (the GJS dialog),
                  tty (this terminal), auto (the dialog when there is a
                  display, else the terminal, else deny; the default)`;

export const hostVerb: Verb = {
  name: 'host',
  usage,
  async run(argv) {
    const { values } = parse(argv, { config: { type: 'string' }, 'no-shares': { type: 'boolean' }, dialog: { type: 'string', default: 'auto' } }, usage);
    if (values.help) return console.log(usage), 0;
    const dialog = values.dialog as string;
    if (dialog !== 'auto' && dialog !== 'gui' && dialog !== 'tty') throw new UsageError(`--dialog takes auto, gui or tty, not "${dialog}"`);
    const config = loadConfig(values.config);
    const daemon = await startHostDaemon({ config, busAddress: sessionBusAddress(), shares: !values['no-shares'], dialog });
    await Promise.race([untilSignal(), daemon.busGone]);
    await daemon.stop();
    return 0;
  },
};
