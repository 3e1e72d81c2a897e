import { readdirSync, readFileSync } from 'node:fs';
import { NETWORK_INTERFACE, NETWORK_PATH } from '../../portals/network/names.js';
import { Bus, BusCallError } from '../dbus/bus.js';
import { BACKEND_BUS_NAME } from '../guest/backend.js';
import { CONTROL_BUS_NAME } from '../host/control.js';
import { daemonControl, hostOrGuestVerb, table, UsageError, type Verb } from './common.js';

const usage = `Usage, in a VM:      xdp-vm net list [--json]
                     xdp-vm net join NETWORK
                     xdp-vm net leave NETWORK
       on the host:  xdp-vm net list [--json]
                     xdp-vm net attach VM NETWORK
                     xdp-vm net detach VM NETWORK

Networks are named in the host config's "networks" table. A VM joins one
with a NIC the host hot-plugs into it; the VM's own network manager or DHCP
client configures it (nothing here writes the VM's network config).

In a VM, join asks the host, which asks its user unless a policy row decides
(xdp-vm permissions set VM Network allow|deny NETWORK on the host); "Always"
joins it whenever the VM starts. On the host, attach asks nobody: you are the
user. What each kind of network gives a VM: README.md, Networks.

Which side this is: the host when the host daemon's bus name
(${CONTROL_BUS_NAME}) is on this session bus, else a VM, where it asks the
guest backend (${BACKEND_BUS_NAME}, started by D-Bus activation). On the host,
start the daemon first (systemctl --user start xdp-vm-host, or xdp-vm host).`;

/** The user may be shown a question on the host, then a NIC is plugged in: give both time. */
const JOIN_MS = 150_000;
/** How long a joined NIC may take to show up in this VM's kernel. */
const NIC_WAIT_MS = 15_000;

type GuestRow = [string, string, boolean, string];
type HostRow = [string, string, string, string[]];

function explain(err: BusCallError): string {
  if (/UnknownObject|UnknownMethod|UnknownInterface/.test(err.errorName)) return 'the host does not serve networks to this VM now (a deny row for them all, or no host reached yet)';
  // No daemon and no backend: this may be a host whose daemon is not running, or a VM without the guest side.
  if (/ServiceUnknown|NameHasNoOwner|Spawn/.test(err.errorName)) return `neither the host daemon (${CONTROL_BUS_NAME}) nor the guest backend (${BACKEND_BUS_NAME}) is on this session bus: on the host, start the daemon (xdp-vm host); in a VM, run xdp-vm install-guest`;
  return err.message.replace(/^\w+: [\w.]+: /, '');
}

/** The kernel's name for the NIC with `mac`, once it has one. */
async function interfaceWithMac(mac: string): Promise<string | undefined> {
  const deadline = Date.now() + NIC_WAIT_MS;
  for (;;) {
    for (const name of readdirSync('/sys/class/net')) {
      try {
        if (readFileSync(`/sys/class/net/${name}/address`, 'utf8').trim() === mac) return name;
      } catch {
        /* gone meanwhile */
      }
    }
    if (Date.now() > deadline) return undefined;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function inGuest(bus: Bus, action: string | undefined, rest: string[], json: boolean): Promise<number> {
  const call = (member: string, signature = '', body: unknown[] = [], timeoutMs?: number) =>
    bus.call({ destination: BACKEND_BUS_NAME, path: NETWORK_PATH, interface: NETWORK_INTERFACE, member, signature, body, ...(timeoutMs ? { timeoutMs } : {}) });
  try {
    if (action === 'join' || action === 'leave') {
      if (rest.length !== 1) throw new UsageError(`net ${action} takes NETWORK\n\n${usage}`);
      const network = rest[0]!;
      if (action === 'leave') {
        const [left] = (await call('Leave', 's', [network], JOIN_MS)) as [boolean];
        console.log(left ? `Left '${network}': its NIC is unplugged.` : `This VM was not on '${network}'.`);
        return 0;
      }
      const [mac] = (await call('Join', 's', [network], JOIN_MS)) as [string];
      const nic = await interfaceWithMac(mac);
      console.log(`Joined '${network}': ${nic ? `interface ${nic}` : 'a NIC'} with MAC ${mac}; this VM's network manager or DHCP client configures it.`);
      return 0;
    }
    if (action === 'attach' || action === 'detach') throw new UsageError(`net ${action} is the host's (no host daemon on this bus); in a VM, use join or leave\n\n${usage}`);
    if (action !== 'list' || rest.length) throw new UsageError(usage);
    const [rows] = (await call('List')) as [GuestRow[]];
    const list = rows.map(([name, type, joined, description]) => ({ name, type, joined, description }));
    if (json) console.log(JSON.stringify(list, null, 2));
    else if (!list.length) console.log('The host offers this VM no networks.');
    else console.log(table(list.map((n) => [n.name, n.type, n.joined ? 'yes' : 'no', n.description]), ['NETWORK', 'TYPE', 'JOINED', 'WHAT IT IS']));
    return 0;
  } catch (err) {
    if (err instanceof BusCallError) throw new Error(`${action ?? 'net'}: ${explain(err)}`);
    throw err;
  }
}

async function onHost(control: NonNullable<Awaited<ReturnType<typeof daemonControl>>>, action: string | undefined, rest: string[], json: boolean): Promise<number> {
  if (action === 'attach' || action === 'detach') {
    if (rest.length !== 2) throw new UsageError(`net ${action} takes VM and NETWORK\n\n${usage}`);
    const [vm, network] = rest as [string, string];
    if (action === 'detach') {
      await control.call('DetachNetwork', 'ss', [vm, network]);
      console.log(`Detached ${vm} from '${network}': its NIC is unplugged.`);
      return 0;
    }
    const [mac] = (await control.call('AttachNetwork', 'ss', [vm, network])) as [string];
    console.log(`Attached ${vm} to '${network}': a NIC with MAC ${mac}; the VM's network manager or DHCP client configures it.`);
    return 0;
  }
  if (action === 'join' || action === 'leave') throw new UsageError(`net ${action} is a VM's (this is the host: its daemon is on this bus); here, use attach or detach VM NETWORK\n\n${usage}`);
  if (action !== 'list' || rest.length) throw new UsageError(usage);
  const [rows] = (await control.call('ListNetworks')) as [HostRow[]];
  const list = rows.map(([name, type, description, vms]) => ({ name, type, description, vms }));
  if (json) console.log(JSON.stringify(list, null, 2));
  else if (!list.length) console.log('The host config names no networks ("networks").');
  else console.log(table(list.map((n) => [n.name, n.type, n.vms.join(', ') || '-', n.description]), ['NETWORK', 'TYPE', 'VMS ON IT', 'WHAT IT IS']));
  return 0;
}

export const netVerb: Verb = hostOrGuestVerb('net', usage, { onHost, inGuest });
