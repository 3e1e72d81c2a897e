import { defaultConfigPath, loadConfig } from '../config/load.js';
import { vmConfigs } from '../config/schema.js';
import { Bus, type Vardict } from '../dbus/bus.js';
import { daemonControl, parse, sessionBusAddress, table, type Verb } from './common.js';

const usage = `Usage: xdp-vm vms [--config FILE] [--json]

List the configured VMs, how each connects, whether it is connected now,
the state of its document share (ready, attached, failed, ...), and the
portals it is served (a VM-wide deny row shuts one).`;

interface VmRow {
  name: string;
  label: string;
  transport: string;
  connected: boolean | null;
  share: string;
  detail: string;
  portals: string[] | null;
  vmm: { type: string; detail: string; capabilities: string[]; lacks: Record<string, string> } | null;
}

export const vmsVerb: Verb = {
  name: 'vms',
  usage,
  async run(argv) {
    const { values } = parse(argv, { config: { type: 'string' }, json: { type: 'boolean' } }, usage);
    if (values.help) return console.log(usage), 0;
    const config = loadConfig(values.config ?? defaultConfigPath());
    const rows: VmRow[] = vmConfigs(config).map((vm) => ({ name: vm.name, label: vm.label, transport: vm.transport.type, connected: null, share: 'unknown', detail: '', portals: null, vmm: null }));
    const bus = await Bus.connect(sessionBusAddress());
    try {
      const control = await daemonControl(bus);
      if (control) {
        const [live] = (await control.call('ListVms')) as [[string, Vardict][]];
        for (const [name, props] of live) {
          const row = rows.find((r) => r.name === name);
          if (!row) continue;
          row.connected = props.connected?.value as boolean;
          row.share = props.share?.value as string;
          row.detail = props.share_detail?.value as string;
          row.portals = (props.portals?.value as string[] | undefined) ?? null;
          row.vmm = {
            type: (props.vmm?.value as string | undefined) ?? 'none',
            detail: (props.vmm_detail?.value as string | undefined) ?? '',
            capabilities: (props.capabilities?.value as string[] | undefined) ?? [],
            lacks: (props.lacks?.value as Record<string, string> | undefined) ?? {},
          };
        }
      }
      if (values.json) console.log(JSON.stringify({ daemon: !!control, vms: rows }, null, 2));
      else {
        if (!control) console.log('The host daemon is not running (start it with: xdp-vm host); showing the config only.\n');
        const yes = (c: boolean | null) => (c === null ? '?' : c ? 'yes' : 'no');
        const portals = (r: VmRow) => (r.portals === null ? '?' : r.portals.join(',') || 'none');
        console.log(table(rows.map((r) => [r.name, r.label, r.transport, yes(r.connected), r.share, portals(r)]), ['VM', 'LABEL', 'TRANSPORT', 'CONNECTED', 'SHARE', 'PORTALS']));
        for (const r of rows.filter((r) => r.detail)) console.log(`\n${r.name}: ${r.detail}`);
        for (const r of rows) for (const why of Object.values(r.vmm?.lacks ?? {})) console.log(`${r.name}: ${why}`);
      }
    } finally {
      bus.close();
    }
    return 0;
  },
};
