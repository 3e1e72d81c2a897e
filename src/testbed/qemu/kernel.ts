import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { requireProgram } from '../../deps.js';
import { runProgram } from '../../exec.js';

/**
 * The guest kernel: Debian's own, unpacked from its .deb without running its
 * postinst (no initramfs-tools, no bootloader hooks), and turned into an ELF
 * vmlinux so QEMU can enter it through PVH and skip the xz decompressor, which
 * costs seconds under TCG.
 */

export interface GuestKernel {
  version: string;
  /** The unpacked package root: boot/ and lib/modules/<version>/. */
  root: string;
  modulesDir: string;
  bzImage: string;
}

/** The kernel package `linux-image-amd64` points at, e.g. `linux-image-6.1.0-56-amd64`. */
export async function currentKernelPackage(): Promise<string> {
  const override = process.env.XDP_VM_GUEST_KERNEL_PACKAGE;
  if (override) return override;
  const { stdout } = await runProgram('apt-cache', ['depends', 'linux-image-amd64']);
  const match = /Depends:\s+(linux-image-[0-9][^\s<>]*)/.exec(stdout);
  if (!match?.[1]) {
    throw new Error(`cannot tell which kernel linux-image-amd64 depends on (run 'apt-get update'?): ${stdout.trim()}`);
  }
  return match[1];
}

/** Unpack the kernel package into `<cacheDir>/<version>/root` unless already there. */
export async function ensureKernel(cacheDir: string, pkg: string): Promise<GuestKernel> {
  const version = pkg.replace(/^linux-image-/, '');
  const dir = path.join(cacheDir, version);
  const kernel = describeKernel(version, path.join(dir, 'root'));
  if (kernel) return kernel;
  const staging = `${dir}.tmp-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(staging, { recursive: true });
  try {
    // apt-get warns when it downloads as root into a directory _apt cannot read; harmless.
    await runProgram('apt-get', ['download', pkg], { cwd: staging, timeoutMs: 300_000 });
    const deb = readdirSync(staging).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb in ${staging}`);
    mkdirSync(path.join(staging, 'out'));
    await runProgram('dpkg-deb', ['-x', path.join(staging, deb), path.join(staging, 'out', 'root')], { timeoutMs: 300_000 });
    mkdirSync(dir, { recursive: true });
    renameOrKeep(path.join(staging, 'out', 'root'), path.join(dir, 'root'));
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  const unpacked = describeKernel(version, path.join(dir, 'root'));
  if (!unpacked) throw new Error(`${pkg} unpacked without boot/vmlinuz-${version} or lib/modules/${version}/modules.order`);
  return unpacked;
}

function describeKernel(version: string, root: string): GuestKernel | undefined {
  const bzImage = path.join(root, 'boot', `vmlinuz-${version}`);
  // modules.dep only exists once depmod has run (a postinst job); modules.order always ships.
  const modulesDir = [path.join(root, 'lib', 'modules', version), path.join(root, 'usr', 'lib', 'modules', version)].find((d) =>
    existsSync(path.join(d, 'modules.order')),
  );
  if (!existsSync(bzImage) || !modulesDir) return undefined;
  return { version, root, modulesDir, bzImage };
}

/** Another process may have won the race to the same cache entry; theirs is as good. */
function renameOrKeep(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (err) {
    if (!existsSync(to)) throw err;
  }
}

interface Payload {
  format: 'xz' | 'zstd' | 'gzip';
  compressed: Buffer;
  expectedSize: number;
}

/** Find the compressed kernel inside a bzImage, using the boot protocol's own fields. */
export function bzImagePayload(image: Buffer): Payload {
  if (image.readUInt32LE(0x202) !== 0x53726448) throw new Error('not a bzImage: no "HdrS" boot protocol header');
  const protocol = image.readUInt16LE(0x206);
  if (protocol < 0x208) throw new Error(`boot protocol ${protocol.toString(16)} predates payload fields (2.08)`);
  const setupSects = image.readUInt8(0x1f1) || 4;
  const start = (setupSects + 1) * 512 + image.readUInt32LE(0x248);
  const length = image.readUInt32LE(0x24c);
  const payload = image.subarray(start, start + length);
  // The build appends the decompressed size (le32) after the compressed stream.
  const compressed = payload.subarray(0, payload.length - 4);
  const expectedSize = payload.readUInt32LE(payload.length - 4);
  const magic = compressed.subarray(0, 6).toString('hex');
  if (magic === 'fd377a585a00') return { format: 'xz', compressed, expectedSize };
  if (magic.startsWith('28b52ffd')) return { format: 'zstd', compressed, expectedSize };
  if (magic.startsWith('1f8b')) return { format: 'gzip', compressed, expectedSize };
  throw new Error(`unsupported kernel compression (payload starts ${magic})`);
}

/** Write the ELF vmlinux from `bzImage` to `out`, refusing one QEMU could not PVH-boot. */
export async function extractVmlinux(bzImage: string, out: string): Promise<void> {
  const { format, compressed, expectedSize } = bzImagePayload(readFileSync(bzImage));
  const work = `${out}.tmp-${process.pid}`;
  const suffix = { xz: '.xz', zstd: '.zst', gzip: '.gz' }[format];
  writeFileSync(work + suffix, compressed);
  try {
    if (format === 'xz') await runProgram(requireProgram('xz'), ['-d', '-f', '-T1', work + suffix], { timeoutMs: 120_000 });
    else if (format === 'zstd') await runProgram(requireProgram('zstd'), ['-d', '-f', '-q', '--rm', work + suffix], { timeoutMs: 120_000 });
    else await runProgram('gzip', ['-d', '-f', work + suffix], { timeoutMs: 120_000 });
    const elf = readFileSync(work);
    if (elf.length !== expectedSize) throw new Error(`vmlinux is ${elf.length} bytes, the bzImage promised ${expectedSize}`);
    if (!hasPvhEntry(elf)) throw new Error('vmlinux has no PVH entry note (kernel built without CONFIG_PVH?)');
    renameSync(work, out);
  } finally {
    rmSync(work, { force: true });
    rmSync(work + suffix, { force: true });
  }
}

interface ProgramHeader {
  type: number;
  offset: number;
  size: number;
}

function programHeaders(elf: Buffer): ProgramHeader[] {
  if (elf.readUInt32BE(0) !== 0x7f454c46) throw new Error('not an ELF file');
  if (elf.readUInt8(4) !== 2 || elf.readUInt8(5) !== 1) throw new Error('not a little-endian 64-bit ELF file');
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  const headers: ProgramHeader[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    headers.push({ type: elf.readUInt32LE(at), offset: Number(elf.readBigUInt64LE(at + 8)), size: Number(elf.readBigUInt64LE(at + 32)) });
  }
  return headers;
}

/** The NUL-separated `key=value` strings of a kernel module's `.modinfo` section. */
export function moduleInfo(ko: Buffer): Map<string, string> {
  programHeaders(ko); // validates the ELF identity
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const section = (i: number) => {
    const at = shoff + i * shentsize;
    return { name: ko.readUInt32LE(at), offset: Number(ko.readBigUInt64LE(at + 0x18)), size: Number(ko.readBigUInt64LE(at + 0x20)) };
  };
  const names = section(ko.readUInt16LE(0x3e));
  const info = new Map<string, string>();
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const nameEnd = ko.indexOf(0, names.offset + s.name);
    if (ko.toString('latin1', names.offset + s.name, nameEnd) !== '.modinfo') continue;
    for (const entry of ko.toString('utf8', s.offset, s.offset + s.size).split('\0')) {
      const eq = entry.indexOf('=');
      if (eq > 0 && !info.has(entry.slice(0, eq))) info.set(entry.slice(0, eq), entry.slice(eq + 1));
    }
  }
  return info;
}

const PT_INTERP = 3;
const PT_NOTE = 4;
/** XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry point QEMU's pvh.bin jumps to. */
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export function hasPvhEntry(elf: Buffer): boolean {
  for (const ph of programHeaders(elf).filter((h) => h.type === PT_NOTE)) {
    let at = ph.offset;
    while (at + 12 <= ph.offset + ph.size) {
      const namesz = elf.readUInt32LE(at);
      const descsz = elf.readUInt32LE(at + 4);
      const type = elf.readUInt32LE(at + 8);
      const name = elf.subarray(at + 12, at + 12 + namesz).toString('latin1');
      if (name === 'Xen\0' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
      at += 12 + align4(namesz) + align4(descsz);
    }
  }
  return false;
}

/** A program the initramfs can run before any library exists. */
export function isStaticElf(file: string): boolean {
  return !programHeaders(readFileSync(file)).some((h) => h.type === PT_INTERP);
}

function align4(n: number): number {
  return (n + 3) & ~3;
}
