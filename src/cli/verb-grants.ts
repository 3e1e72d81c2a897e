import { defaultConfigPath, loadConfig } from '../config/load.js';
import { vmConfigs, type VmConfig } from '../config/schema.js';
import { Bus } from '../dbus/bus.js';
import { displayBytes } from '../file-uri.js';
import { audit } from '../host/audit.js';
import { grantRow, revokeAll } from '../host/control.js';
import { DocumentStore } from '../host/documents.js';
import { FILE_CHOOSER } from '../../portals/file-chooser/index.js';
import { DEFAULT_GUEST_MOUNT, removedVmsWithDocuments } from '../host/removed-vms.js';
import { UsageError, daemonControl, parse, sessionBusAddress, table, type Verb } from './common.js';

const usage = `Usage: xdp-vm grants [VM] [--config FILE] [--json]
       xdp-vm grants revoke VM ID
       xdp-vm grants revoke VM --all

List what each VM has been given (every VM, or only VM), or take one grant
back: the file disappears from the VM's share at once. An ID is the
document id shown by the list, also the folder name under the VM's mount.
--all takes back everything the VM has and unplugs its share.

Works through the running host daemon; without one it reads and changes the
document store directly.`;

type Row = [string, string, Buffer, string, boolean];

/** A configured VM, or one removed from the config that still has documents (so they can be revoked). */
function findVm(vms: VmConfig[], name: string, docs: DocumentStore): { name: string; guestMount: string } {
  const vm = vms.find((v) => v.name === name);
  if (vm) return { name, guestMount: vm.share.guestMount };
  if (docs.vmsWithDocuments().includes(name)) return { name, guestMount: DEFAULT_GUEST_MOUNT };
  throw new UsageError(`no VM named "${name}"; configured: ${vms.map((v) => v.name).join(', ') || 'none'}`);
}

export const grantsVerb: Verb = {
  name: 'grants',
  usage,
  async run(argv) {
    const { values, positionals } = parse(argv, { config: { type: 'string' }, json: { type: 'boolean' }, all: { type: 'boolean' } }, usage);
    if (values.help) return console.log(usage), 0;
    const vms = vmConfigs(loadConfig(values.config ?? defaultConfigPath()));
    const revoking = positionals[0] === 'revoke';
    if (revoking && positionals.length !== (values.all ? 2 : 3)) throw new UsageError(`grants revoke takes VM and ID, or VM --all\n\n${usage}`);
    if (!revoking && positionals.length > 1) throw new UsageError(usage);
    const vmName = revoking ? positionals[1]! : positionals[0];
    const bus = await Bus.connect(sessionBusAddress(), { unixFds: true });
    try {
      const docs = await DocumentStore.open(bus);
      if (vmName) findVm(vms, vmName, docs);
      const control = await daemonControl(bus);
      if (revoking && values.all) {
        if (control) {
          const [n] = (await control.call('RevokeAll', 's', [vmName])) as [number];
          console.log(`Revoked ${n} grant(s) from ${vmName} and unplugged its share.`);
        } else {
          const ids = await revokeAll(docs, vmName!);
          console.log(`Revoked ${ids.length} grant(s) from ${vmName}. The host daemon is not running, so its share stays plugged in.`);
        }
        return 0;
      }
      if (revoking) {
        const id = positionals[2]!;
        if (control) await control.call('Revoke', 'ss', [vmName, id]);
        else {
          if (!(await docs.revoke(vmName!, id))) throw new UsageError(`VM "${vmName}" has no grant "${id}"`);
          audit({ vm: vmName!, portal: FILE_CHOOSER.name, request: 'grants revoke', decision: 'revoke', reason: 'cli', grant: [id] });
        }
        console.log(`Revoked ${id} from ${vmName}.`);
        return 0;
      }
      let rows: Row[];
      if (control) [rows] = (await control.call('ListGrants', 's', [vmName ?? ''])) as [Row[]];
      else {
        rows = [];
        const configured = new Set(vms.map((v) => v.name));
        const targets = vmName ? [vmName] : [...configured, ...removedVmsWithDocuments(docs, configured)];
        for (const name of targets) {
          const vm = findVm(vms, name, docs);
          for (const g of await docs.list(vm.name)) rows.push(grantRow(g, vm.guestMount));
        }
      }
      const list = rows.map(([vm, id, host, guest, writable]) => ({ vm, id, hostPath: displayBytes(host.subarray(0, host.indexOf(0) >= 0 ? host.indexOf(0) : host.length)), guestPath: guest, writable }));
      if (values.json) console.log(JSON.stringify(list, null, 2));
      else if (list.length === 0) console.log(vmName ? `${vmName} has no grants.` : 'No VM has any grants.');
      else console.log(table(list.map((g) => [g.vm, g.id, g.writable ? 'rw' : 'ro', g.hostPath, g.guestPath]), ['VM', 'ID', 'MODE', 'HOST PATH', 'GUEST PATH']));
      return 0;
    } finally {
      bus.close();
    }
  },
};
