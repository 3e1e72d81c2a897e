import { loadConfig, defaultConfigPath } from '../config/load.js';
import { startHostDaemon } from '../host/daemon.js';
import { childLogger } from '../log.js';
import { peerLogLimiter } from '../protocol/log-limiter.js';
import { UsageError, parse, sessionBusAddress, type Verb } from './common.js';

const usage = `Usage: xdp-vm host [--config FILE] [--no-shares] [--dialog auto|gui|tty]

Run the host daemon on the session bus: listen on every configured VM's
transport, show the host dialogs, keep the per-VM document views, and run
one virtiofsd per VM share.

  --config FILE   the VM config (default: ${defaultConfigPath()})
  --no-shares     do not start virtiofsd (no VM will see its files)
  --dialog MODE   how consent questions are asked: gui (the GJS dialog),
                  tty (this terminal), auto (the dialog when there is a
                  display, else the terminal, else deny; the default)`;

/**
 * SIGTERM must stop the daemon within 2 s whatever it is waiting for (a bus
 * that stopped answering, a VMM socket): the stop gets this long, and a
 * signal during it ends the process at once. Cutting the stop short loses
 * nothing that matters: virtiofsd runs in its own session and keeps serving,
 * and the next daemon adopts it.
 */
const STOP_DEADLINE_MS = 1500;
const STOP_SIGNALS = ['SIGINT', 'SIGTERM'] as const;

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
    const signalled = new Promise<'signal'>((resolve) => {
      for (const sig of STOP_SIGNALS) process.once(sig, () => resolve('signal'));
    });
    const why = await Promise.race([signalled, daemon.busGone.then(() => 'bus gone' as const)]);
    const log = childLogger({ side: 'host' });
    const exitNow = (what: string) => {
      log.warn(`${what}: exiting without finishing the stop`);
      peerLogLimiter.flush();
      process.exit(1);
    };
    for (const sig of STOP_SIGNALS) process.on(sig, () => exitNow(`${sig} while stopping`));
    const deadline = setTimeout(() => exitNow(`the stop took longer than ${STOP_DEADLINE_MS} ms`), STOP_DEADLINE_MS);
    await daemon.stop();
    clearTimeout(deadline);
    // Bursts of peer mistakes still being counted end here, with their counts.
    peerLogLimiter.flush();
    // Without its bus the daemon cannot serve: a failure, so that systemd restarts it once the bus is back.
    return why === 'bus gone' ? 1 : 0;
  },
};
