/**
 * The guest's "Open on host" handler: the desktop file install-guest writes,
 * and the one handler a target VM must never launch for a link it was sent
 * (it would send the link straight back).
 */
export const OPEN_ON_HOST_DESKTOP_ID = 'xdp-vm-open-on-host.desktop';
export const OPEN_ON_HOST_MIME_TYPES = ['x-scheme-handler/http', 'x-scheme-handler/https', 'x-scheme-handler/mailto'] as const;

/** Where the guest backend takes links from the handler, on its own bus name. */
export const OPEN_URI_INTERFACE = 'io.github.xdp_vm.OpenUri1';
export const OPEN_URI_PATH = '/io/github/xdp_vm/OpenUri';
