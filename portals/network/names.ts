/**
 * Where the guest backend serves networks, on its own bus name; the guest's
 * `xdp-vm net` reads these without loading the guest half.
 */
export const NETWORK_INTERFACE = 'io.github.xdp_vm.Network1';
export const NETWORK_PATH = '/io/github/xdp_vm/Network';
