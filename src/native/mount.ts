import { errnoError, requireAddon } from './addon.js';

/** mount(2) and umount2(2) from the native addon: no mount(8) process per try. */
interface MountBinding {
  mount(source: string, target: string, fstype: string, data: string): number;
  umount(target: string, lazy: boolean): number;
}

function check(rc: number, what: string): void {
  if (rc === 0) return;
  throw errnoError(rc, what);
}

export function mountVirtiofs(tag: string, target: string): void {
  check(requireAddon<MountBinding>('mount(2)').mount(tag, target, 'virtiofs', ''), `mount -t virtiofs ${tag} ${target}`);
}

export function unmount(target: string, opts: { lazy?: boolean } = {}): void {
  check(requireAddon<MountBinding>('umount(2)').umount(target, opts.lazy ?? false), `umount ${opts.lazy ? '-l ' : ''}${target}`);
}
