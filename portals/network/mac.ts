import { createHash } from 'node:crypto';

/**
 * The MAC a VM's NIC on a network gets: the same every time for the same
 * (VM, network) pair, so the guest's DHCP lease, its network manager's
 * connection profile and any firewall rule keyed on it survive a leave and
 * a join, a reboot and a daemon restart. Taken from a hash of both names;
 * the first octet has the locally administered bit (0x02) set and the group
 * bit (0x01) clear, so it is a unicast address no vendor owns.
 */
export function macFor(vm: string, network: string): string {
  const h = createHash('sha256').update(`xdp-vm mac\0${vm}\0${network}`).digest();
  const bytes = [...h.subarray(0, 6)];
  bytes[0] = (bytes[0]! | 0x02) & 0xfe;
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}
