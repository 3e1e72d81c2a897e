import path from 'node:path';
import { Bus } from '../dbus/bus.js';
import { guestPathOfFolder } from '../host/folders/spec.js';
import { FolderStore } from '../host/folders/store.js';
import { UsageError, daemonControl, parse, sessionBusAddress, table, type Verb } from './common.js';

const usage = `Usage: xdp-vm share add VM PATH [--read-only] [--name NAME] [--force]
       xdp-vm share list [VM] [--json]
       xdp-vm share remove VM NAME

Share a whole host folder with a VM: it gets its own virtio-fs device and
virtiofsd, plugged into the running VM, and the guest mounts it at
/run/xdp-vm/shares/NAME and shows it in its file chooser's sidebar. A share
persists: it is plugged in again whenever the VM comes up, until removed.

  --read-only  the VM may read but not change the folder (enforced on the
               host: every write in the guest fails with EROFS)
  --name NAME  the name in the guest (default: from the folder's name);
               lowercase letters, digits, ".", "_" and "-", at most 24
  --force      allow your whole home folder

Never shared: /, system folders, the document store, a folder that overlaps
another VM's share, and your home folder as a whole unless --force.
add and remove need the running host daemon; list reads the saved shares
without one.`;

type Row = [string, string, string, boolean, string, string, string];

export const shareVerb: Verb = {
  name: 'share',
  usage,
  async run(argv) {
    const { values, positionals } = parse(argv, { 'read-only': { type: 'boolean' }, name: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' } }, usage);
    if (values.help) return console.log(usage), 0;
    const [action, ...rest] = positionals;
    const bus = await Bus.connect(sessionBusAddress());
    try {
      const control = await daemonControl(bus);
      const needDaemon = () => {
        if (!control) throw new UsageError('the host daemon is not running, and it serves the shares: start it (systemctl --user start xdp-vm-host, or xdp-vm host), then try again');
        return control;
      };
      if (action === 'add') {
        if (rest.length !== 2) throw new UsageError(`share add takes VM and PATH\n\n${usage}`);
        const [vm, folder] = rest as [string, string];
        const [name, guestPath] = (await needDaemon().call('AddShare', 'sssbb', [vm, path.resolve(folder), values.name ?? '', !!values['read-only'], !!values.force])) as [string, string];
        console.log(`Shared ${path.resolve(folder)} with ${vm} as "${name}"${values['read-only'] ? ', read-only' : ''}: ${guestPath} in the VM.`);
        return 0;
      }
      if (action === 'remove') {
        if (rest.length !== 2) throw new UsageError(`share remove takes VM and NAME\n\n${usage}`);
        const [vm, name] = rest as [string, string];
        await needDaemon().call('RemoveShare', 'ss', [vm, name]);
        console.log(`Removed share "${name}" from ${vm}: unmounted, unplugged and forgotten.`);
        return 0;
      }
      if (action !== 'list' || rest.length > 1) throw new UsageError(usage);
      const vm = rest[0];
      let rows: Row[];
      if (control) [rows] = (await control.call('ListShares', 's', [vm ?? ''])) as [Row[]];
      else {
        const store = new FolderStore().load();
        if (store.problem) throw new Error(store.problem);
        rows = (vm ? store.of(vm) : [...store.all()]).map((f) => [f.vm, f.name, f.path, f.readOnly, guestPathOfFolder(f.name), 'daemon not running', '']);
      }
      const list = rows.map(([vm, name, hostPath, readOnly, guestPath, state, detail]) => ({ vm, name, hostPath, readOnly, guestPath, state, ...(detail ? { detail } : {}) }));
      if (values.json) console.log(JSON.stringify(list, null, 2));
      else if (list.length === 0) console.log(vm ? `${vm} has no folder shares.` : 'No VM has folder shares.');
      else console.log(table(list.map((s) => [s.vm, s.name, s.readOnly ? 'ro' : 'rw', s.state, s.hostPath, s.guestPath, s.detail ?? '']), ['VM', 'NAME', 'MODE', 'STATE', 'HOST PATH', 'GUEST PATH', 'DETAIL']));
      return 0;
    } finally {
      bus.close();
    }
  },
};
