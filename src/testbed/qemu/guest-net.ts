import type { GuestAgent } from './agent.js';
import type { PortalVm } from './portal-vm.js';

/**
 * A guest's side of a network, as its own tools see it: which interface
 * has a MAC, a DHCP lease taken by busybox udhcpc (the guest configures
 * itself; nothing of ours writes its network config), and ping.
 */

/** Anything that runs a shell script in the guest and resolves with its stdout. */
export type GuestShell = Pick<PortalVm, 'sh'>;

/** A bare guest's agent as a GuestShell. */
export function agentShell(agent: GuestAgent): GuestShell {
  return { sh: (script, timeoutMs) => agent.check(script, timeoutMs === undefined ? {} : { timeoutMs }) };
}

/** The guest's interface with `mac`, or '' when it has none. */
export async function nicWithMac(g: GuestShell, mac: string): Promise<string> {
  return (await g.sh(`for i in /sys/class/net/*; do [ "$(cat $i/address)" = "${mac}" ] && echo \${i##*/}; done; true`)).trim();
}

/** busybox udhcpc runs this with the lease in its environment; it configures the interface as a network manager would. */
const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig) ip link set "$interface" up; ip -4 addr flush dev "$interface" ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; echo "$r" > /tmp/router-$interface; break; done
    echo "$dns" > /tmp/dns-$interface
    echo "$ip" > /tmp/address-$interface ;;
esac
`;

export interface Lease {
  address: string;
  /** '' when the DHCP server offered none. */
  router: string;
  dns: string;
}

/** Bring `nic` up and take a lease on it; throws when no DHCP server answers. */
export async function dhcp(g: GuestShell, nic: string): Promise<Lease> {
  await g.sh(`cat > /tmp/udhcpc.sh <<'EOF'\n${UDHCPC_SCRIPT}EOF\nchmod +x /tmp/udhcpc.sh; rm -f /tmp/router-${nic} /tmp/address-${nic} /tmp/dns-${nic}`);
  await g.sh(`ip link set ${nic} up && busybox udhcpc -i ${nic} -q -n -t 10 -T 2 -s /tmp/udhcpc.sh`, 90_000);
  const read = async (f: string) => (await g.sh(`cat /tmp/${f}-${nic} 2>/dev/null; true`)).trim();
  return { address: await read('address'), router: await read('router'), dns: await read('dns') };
}

/** Whether `address` answers ping from the guest. */
export async function pings(g: GuestShell, address: string): Promise<boolean> {
  return (await g.sh(`busybox ping -c 2 -W 2 ${address} >/dev/null 2>&1 && echo yes || echo no`, 30_000)).trim() === 'yes';
}

/** Whether something in the guest listens on TCP `port` (state 0A in /proc/net/tcp*). */
export async function listening(g: GuestShell, port: number): Promise<boolean> {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  return (await g.sh(`cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$2 ~ /:${hex}$/ && $4 == "0A"' | wc -l`)).trim() !== '0';
}

/** What a TCP server at `address`:`port` sends a client in the guest (the host's node, run in the guest), until it hangs up; throws when it cannot connect. */
export async function guestReads(g: GuestShell, address: string, port: number, timeoutMs = 60_000): Promise<string> {
  return g.sh(`${process.execPath} -e 'require("net").connect(${port}, "${address}").on("data", (d) => process.stdout.write(d)).on("error", (e) => { console.error(e.message); process.exit(1); })'`, timeoutMs);
}

/** Start a TCP server in the guest on `port` that sends `line` and a newline to each client; resolves once it listens. */
export async function guestServes(g: GuestShell, port: number, line: string, timeoutMs = 60_000): Promise<void> {
  await g.sh(`setsid nohup ${process.execPath} -e 'require("net").createServer((s) => s.end(${JSON.stringify(`${line}\n`)})).listen(${port})' > /tmp/listener-${port}.log 2>&1 < /dev/null &`);
  // node starts slowly in a TCG guest.
  const until = Date.now() + timeoutMs;
  while (!(await listening(g, port))) {
    if (Date.now() > until) throw new Error(`nothing listens on port ${port} in the guest after ${timeoutMs} ms: ${await g.sh(`cat /tmp/listener-${port}.log; true`)}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}
