import type { PortalVm } from './portal-vm.js';

/**
 * A guest's side of a network, as its own tools see it: which interface
 * has a MAC, a DHCP lease taken by busybox udhcpc (the guest configures
 * itself; nothing of ours writes its network config), and ping.
 */

/** The guest's interface with `mac`, or '' when it has none. */
export async function nicWithMac(g: PortalVm, mac: string): Promise<string> {
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
export async function dhcp(g: PortalVm, nic: string): Promise<Lease> {
  await g.sh(`cat > /tmp/udhcpc.sh <<'EOF'\n${UDHCPC_SCRIPT}EOF\nchmod +x /tmp/udhcpc.sh; rm -f /tmp/router-${nic} /tmp/address-${nic} /tmp/dns-${nic}`);
  await g.sh(`ip link set ${nic} up && busybox udhcpc -i ${nic} -q -n -t 10 -T 2 -s /tmp/udhcpc.sh`, 90_000);
  const read = async (f: string) => (await g.sh(`cat /tmp/${f}-${nic} 2>/dev/null; true`)).trim();
  return { address: await read('address'), router: await read('router'), dns: await read('dns') };
}

/** Whether `address` answers ping from the guest. */
export async function pings(g: PortalVm, address: string): Promise<boolean> {
  return (await g.sh(`busybox ping -c 2 -W 2 ${address} >/dev/null 2>&1 && echo yes || echo no`, 30_000)).trim() === 'yes';
}
