import { closeSync } from 'node:fs';
import { parse, UsageError, untilSignal, type Verb } from './common.js';

const usage = `Usage: xdp-vm helper serve [--allow-list FILE] [--bus ADDRESS] [--idle-exit SECONDS]
                         [--net-sysfs DIR] [--usb-sysfs DIR] [--dev-usb DIR] [--state-dir DIR]
       xdp-vm helper check [FILE]
       xdp-vm helper COMMAND ARG [--bus ADDRESS]

The privileged helper: a root service on the system bus that makes taps the
user owns on allowed bridges, brings up vm-only bridges, and hands allowed USB devices to usbip-host or
opens them for passthrough. What it allows is /etc/xdp-vm/helper.conf
(default deny; see data/helper.conf).

  serve    run the service (D-Bus activation does this; as root only)
  check    parse an allow list and check who could have written it
  COMMAND  ask the running helper, as yourself:
             tap-create BRIDGE   prints the new tap's name
             tap-delete TAP
             tap-open TAP        opens a queue of your tap and closes it again (a check)
             vm-only-up BRIDGE   brings a vm-only bridge up (made on first use, with
                                 its DHCP server); prints the host's address on it
             usb-bind BUSID      e.g. 1-2.3
             usb-unbind BUSID
             usb-open BUSID      opens the device node and closes it again (a check)
             usb-export BUSID    a device you bound: the host kernel exports it on a
                                 stream, which is closed again at once (a check)

The --*-sysfs, --dev-usb and --state-dir options point the service at
another system (the tests use a fake sysfs); --idle-exit 0 keeps it up.`;

export const helperVerb: Verb = {
  name: 'helper',
  usage,
  async run(argv) {
    const { values, positionals } = parse(
      argv,
      {
        'allow-list': { type: 'string' },
        bus: { type: 'string' },
        'idle-exit': { type: 'string', default: '300' },
        'net-sysfs': { type: 'string' },
        'usb-sysfs': { type: 'string' },
        'dev-usb': { type: 'string' },
        'state-dir': { type: 'string' },
      },
      usage,
    );
    if (values.help) return console.log(usage), 0;
    const [sub, ...rest] = positionals;
    const commands = await import('../helper/commands.js');
    if (sub === 'serve') {
      if (rest.length) throw new UsageError(`serve takes no arguments\n\n${usage}`);
      if (process.getuid?.() !== 0) throw new UsageError('the helper runs as root: the system bus starts it (see README "The privileged helper")');
      const idleSeconds = Number(values['idle-exit']);
      if (!Number.isInteger(idleSeconds) || idleSeconds < 0) throw new UsageError(`--idle-exit takes whole seconds, 0 for never\n\n${usage}`);
      const { DEFAULT_PATHS } = await import('../helper/operations.js');
      const { startHelperService } = await import('../helper/service.js');
      const service = await startHelperService({
        busAddress: values.bus ?? commands.systemBusAddress(),
        idleSeconds,
        paths: {
          allowList: values['allow-list'] ?? DEFAULT_PATHS.allowList,
          netSysfs: values['net-sysfs'] ?? DEFAULT_PATHS.netSysfs,
          usbSysfs: values['usb-sysfs'] ?? DEFAULT_PATHS.usbSysfs,
          devUsb: values['dev-usb'] ?? DEFAULT_PATHS.devUsb,
          stateDir: values['state-dir'] ?? DEFAULT_PATHS.stateDir,
        },
      });
      await Promise.race([service.done, untilSignal()]);
      service.stop();
      return 0;
    }
    if (sub === 'check') {
      if (rest.length > 1) throw new UsageError(`check takes at most one FILE\n\n${usage}`);
      const { readAllowList, DEFAULT_ALLOW_LIST } = await import('../helper/allow-list.js');
      const list = readAllowList(rest[0] ?? values['allow-list'] ?? DEFAULT_ALLOW_LIST);
      console.log(`${list.file}: usable, root's own; ${list.bridges.length} bridge rule(s), ${list.vmOnly.length} vm-only rule(s), ${list.usb.length} usb rule(s); everything else is refused`);
      return 0;
    }
    let cmd;
    try {
      cmd = commands.parseCommand(positionals);
    } catch (err) {
      throw new UsageError(`${(err as Error).message}\n\n${usage}`);
    }
    const { HelperClient } = await import('../helper/client.js');
    const client = await HelperClient.connect(values.bus ?? commands.systemBusAddress());
    try {
      const out = await client.run(cmd.name, cmd.arg);
      if (cmd.name === 'tap-create' || cmd.name === 'vm-only-up') console.log(out);
      else if (cmd.name === 'usb-open' && typeof out === 'number') {
        closeSync(out);
        console.log(`${cmd.arg}: the helper opened its device node for you (descriptor received, now closed)`);
      } else if (cmd.name === 'usb-export' && typeof out === 'number') {
        closeSync(out);
        console.log(`${cmd.arg}: usbip-host took one end of a stream and you the other (received, now closed: usbip-host offers it again)`);
      } else if (cmd.name === 'tap-open' && typeof out === 'number') {
        closeSync(out);
        console.log(`${cmd.arg}: the helper opened a queue of your tap for you (descriptor received, now closed)`);
      }
      return 0;
    } finally {
      client.close();
    }
  },
};
