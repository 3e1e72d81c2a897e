/**
 * Where the guest backend serves USB, on its own bus name; the guest's
 * `xdp-vm usb` reads these without loading the guest half.
 */
export const USB_INTERFACE = 'io.github.xdp_vm.Usb1';
export const USB_PATH = '/io/github/xdp_vm/Usb';
