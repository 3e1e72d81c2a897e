import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { currentKernelPackage, ensureKernel } from './qemu/kernel.js';
import { defaultCacheDir, MODULE_GROUPS, resolveModuleGroups } from './qemu/guest-image.js';

/**
 * The host side's preparations for a guest that runs both kernel halves of
 * USB/IP (usbip-guest.ts runs in it): the usbip modules of the guest's
 * kernel, and a disk image whose bytes the test knows.
 */

/**
 * usbip-core, usbip-host and vhci-hcd of the guest's kernel, as absolute
 * paths into the unpacked kernel package (the guest sees them: it sees the
 * host's root), in insmod order, leaving out what the harness's own module
 * groups already load (usbcore, usb-common).
 * TODO(merge): shared with usb-enumerate.test.ts (its minixModule() finds one
 * module of the same unpacked package).
 */
export async function usbipModules(): Promise<string[]> {
  const kernel = await ensureKernel(defaultCacheDir(), await currentKernelPackage());
  const files = resolveModuleGroups(kernel.modulesDir, { ...MODULE_GROUPS, usbip: ['usbip_host', 'vhci_hcd'] }).usbip ?? [];
  if (files.length === 0) throw new Error(`the guest kernel ${kernel.version} has no usbip-host or vhci-hcd module`);
  const compressed = files.find((f) => !f.endsWith('.ko'));
  // busybox insmod takes plain .ko files; Debian 12's kernels ship them so (CONFIG_MODULE_COMPRESS_NONE).
  if (compressed) throw new Error(`${compressed} is compressed; this harness loads plain .ko files only`);
  return files.map((f) => path.join(kernel.modulesDir, f));
}

export interface PatternImage {
  file: string;
  size: number;
  sha256: string;
  /** Known text at a known byte offset, off any sector boundary. */
  marker: { offset: number; text: string };
}

/**
 * `size` bytes that no two sectors share (a counter and `text` run through
 * SHA-256, so two images with other texts share none either), with `text`
 * at `offset`: a read that returns the wrong sector, another image's, or
 * stale or zeroed data, cannot match. TODO(merge): usb-enumerate.test.ts makes its
 * stick image (a minix filesystem) on its own; a shared file could hold both.
 */
export function patternImage(file: string, text: string, size = 1024 * 1024, offset = 600 * 1024 + 123): PatternImage {
  if (offset + text.length > size) throw new Error(`the marker at ${offset} does not fit in ${size} bytes`);
  const image = Buffer.alloc(size);
  for (let at = 0, n = 0; at < size; at += 32, n++) createHash('sha256').update(`${text} ${n}`).digest().copy(image, at);
  image.write(text, offset, 'latin1');
  writeFileSync(file, image);
  return { file, size, sha256: createHash('sha256').update(image).digest('hex'), marker: { offset, text } };
}
