import { loadGuestConfig, GUEST_CONFIG_PATH } from '../guest/guest-config.js';
import { MountAgent } from '../guest/mount-agent.js';
import { childLogger } from '../log.js';
import { parse, untilSignal, type Verb } from './common.js';

const usage = `Usage: xdp-vm mount-agent [--config FILE]

Run inside a VM, as root (the xdp-vm-mount system unit does). Mounts the
host's document share at its mount point when the host plugs it in, and
unmounts it when the host asks or unplugs it. Reads ${GUEST_CONFIG_PATH}.`;

export const mountAgentVerb: Verb = {
  name: 'mount-agent',
  usage,
  async run(argv) {
    const { values } = parse(argv, { config: { type: 'string' } }, usage);
    if (values.help) return console.log(usage), 0;
    const cfg = loadGuestConfig(values.config as string | undefined);
    const agent = new MountAgent({ mountPoint: cfg.mountPoint, tag: cfg.tag, log: childLogger({ side: 'guest', component: 'mount-agent' }) });
    await agent.start();
    await untilSignal();
    agent.stop();
    return 0;
  },
};
