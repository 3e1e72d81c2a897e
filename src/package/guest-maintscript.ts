import { parseArgs } from 'node:util';
import type { PinTemplate } from './guest-files.js';
import { configureGuest } from './guest-pin.js';

/**
 * The guest package's postinst helper, bundled by src/package/debian.ts into
 * /usr/lib/xdg-desktop-portal-vm/dist/package/guest-maintscript.mjs with the
 * build-time template defined in (__XDP_VM_PIN_TEMPLATE__):
 *
 *   node guest-maintscript.mjs configure --root "${DPKG_ROOT:-/}" --portal-version VERSION
 *
 * VERSION is the installed xdg-desktop-portal's Debian version (dpkg-query).
 */
declare const __XDP_VM_PIN_TEMPLATE__: PinTemplate;

function main(argv: string[]): number {
  const { values, positionals } = parseArgs({ args: argv, options: { root: { type: 'string', default: '/' }, 'portal-version': { type: 'string' } }, allowPositionals: true });
  const version = (values['portal-version'] ?? '').replace(/^\d+:/, '');
  if (positionals[0] !== 'configure' || !/^\d+\.\d+/.test(version)) {
    console.error('usage: guest-maintscript.mjs configure --root DIR --portal-version X.Y[...]');
    return 2;
  }
  configureGuest(values.root!, version, __XDP_VM_PIN_TEMPLATE__);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
