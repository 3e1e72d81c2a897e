import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { requireProgram } from '../../deps.js';
import { runProgram } from '../../exec.js';
import { packageRoot } from '../../paths.js';
import { childLogger } from '../../log.js';
import { currentKernelPackage, ensureKernel, extractVmlinux, isStaticElf, moduleInfo } from './kernel.js';

/**
 * Everything a test guest boots from, built once and cached under
 * `.cache/guest/<kernel version>/`: the PVH-bootable vmlinux and a busybox
 * initramfs that loads our drivers and then (normally) switches into the host's
 * own `/`, shared read-only, so the guest runs the host's node and this checkout.
 */

export interface GuestImage {
  kernelVersion: string;
  vmlinux: string;
  initramfs: string;
  /** Module groups the init can load, by name, each in load order (file names). */
  moduleGroups: Record<string, string[]>;
}

/**
 * Drivers by group, so a test that needs no USB can skip its ~0.5 s of insmod.
 * Names as modprobe spells them; dependencies come from modules.dep.
 */
export const MODULE_GROUPS: Readonly<Record<string, readonly string[]>> = {
  core: [
    'virtio_pci', 'virtio_console', 'virtiofs',
    'vsock', 'vmw_vsock_virtio_transport', 'vsock_loopback',
    'virtio_net',
  ],
  usb: ['xhci_pci', 'usbhid', 'hid_generic', 'usb_storage', 'sd_mod', 'evdev'],
};

// The scripts stay in the source tree; this module may run from dist/.
const HARNESS_DIR = path.join(packageRoot(), 'src', 'testbed', 'qemu');
export const INIT_SCRIPT = path.join(HARNESS_DIR, 'guest-init.sh');
export const AGENT_SCRIPT = path.join(HARNESS_DIR, 'guest-agent.sh');
/** Bump when the initramfs layout changes in a way the inputs' hash cannot see. */
const LAYOUT_VERSION = 1;

export function defaultCacheDir(): string {
  return process.env.XDP_VM_GUEST_CACHE ?? path.join(packageRoot(), '.cache', 'guest');
}

const prepared = new Map<string, Promise<GuestImage>>();

/** Build (or find in the cache) the kernel and initramfs; safe to call from many tests. */
export function prepareGuestImage(opts: { cacheDir?: string } = {}): Promise<GuestImage> {
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  let image = prepared.get(cacheDir);
  if (!image) {
    image = buildGuestImage(cacheDir);
    prepared.set(cacheDir, image);
    image.catch(() => prepared.delete(cacheDir));
  }
  return image;
}

async function buildGuestImage(cacheDir: string): Promise<GuestImage> {
  const log = childLogger({ component: 'e2e-guest-image' });
  const started = Date.now();
  const kernel = await ensureKernel(cacheDir, await currentKernelPackage());
  const dir = path.join(cacheDir, kernel.version);
  const vmlinux = path.join(dir, 'vmlinux');
  if (!existsSync(vmlinux)) await extractVmlinux(kernel.bzImage, vmlinux);
  const moduleGroups = resolveModuleGroups(kernel.modulesDir, MODULE_GROUPS);
  const busybox = requireProgram('busybox-static');
  if (!isStaticElf(busybox)) {
    throw new Error(`${busybox} is dynamically linked; the initramfs has no libc. Install busybox-static.`);
  }
  const key = inputsHash(busybox, moduleGroups);
  const initramfs = path.join(dir, `initramfs-${key}.cpio`);
  if (!existsSync(initramfs)) {
    await buildInitramfs(initramfs, kernel.modulesDir, busybox, moduleGroups);
    // Older builds (from earlier init or agent scripts) only take space; QEMU reads
    // the initrd whole at start, so removing one under a running guest is harmless.
    for (const old of readdirSync(dir).filter((f) => /^initramfs-[0-9a-f]+\.cpio$/.test(f) && f !== path.basename(initramfs))) {
      rmSync(path.join(dir, old), { force: true });
    }
  }
  log.info({ kernel: kernel.version, ms: Date.now() - started }, 'guest image ready');
  return { kernelVersion: kernel.version, vmlinux, initramfs, moduleGroups };
}

/** `virtio-pci` and `virtio_pci` are the same module to modprobe; so to us. */
function moduleName(file: string): string {
  return path.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, '').replaceAll('-', '_');
}

interface ModuleIndex {
  /** Path relative to the modules dir, or undefined for an unknown module. */
  file(name: string): string | undefined;
  /** What must be loaded before `file`, as paths. */
  deps(file: string): string[];
}

/**
 * modules.dep when depmod has run; otherwise (a kernel unpacked without its
 * postinst, on a host without kmod) modules.order for the paths and each
 * module's own `.modinfo depends=` for the edges.
 */
function moduleIndex(modulesDir: string): ModuleIndex {
  const lines = (name: string) => readFileSync(path.join(modulesDir, name), 'utf8').split('\n').filter(Boolean);
  if (existsSync(path.join(modulesDir, 'modules.dep'))) {
    const entries = new Map<string, { file: string; deps: string[] }>();
    for (const line of lines('modules.dep')) {
      const [file, rest = ''] = line.split(':');
      if (file) entries.set(moduleName(file), { file, deps: rest.trim().split(/\s+/).filter(Boolean) });
    }
    const byFile = new Map([...entries.values()].map((e) => [e.file, e.deps]));
    return { file: (name) => entries.get(name)?.file, deps: (file) => byFile.get(file) ?? [] };
  }
  const files = new Map(lines('modules.order').map((f) => [moduleName(f), f]));
  const file = (name: string) => files.get(name);
  return {
    file,
    deps: (f) => {
      if (!f.endsWith('.ko')) throw new Error(`${f}: compressed module and no modules.dep; install kmod and run depmod`);
      const depends = moduleInfo(readFileSync(path.join(modulesDir, f))).get('depends') ?? '';
      return depends.split(',').filter(Boolean).map((d) => {
        const dep = file(moduleName(d));
        if (!dep) throw new Error(`${f} depends on ${d}, which modules.order does not list`);
        return dep;
      });
    },
  };
}

/**
 * Each group's modules with their dependencies, dependencies first, leaving out
 * what an earlier group already loads and what is built into the kernel.
 */
export function resolveModuleGroups(modulesDir: string, groups: Readonly<Record<string, readonly string[]>>): Record<string, string[]> {
  const index = moduleIndex(modulesDir);
  const builtinFile = path.join(modulesDir, 'modules.builtin');
  const builtin = new Set(existsSync(builtinFile) ? readFileSync(builtinFile, 'utf8').split('\n').filter(Boolean).map(moduleName) : []);
  const loaded = new Set<string>();
  const visit = (file: string, into: string[]) => {
    if (loaded.has(file)) return;
    loaded.add(file);
    for (const dep of index.deps(file)) visit(dep, into);
    into.push(file);
  };
  const result: Record<string, string[]> = {};
  for (const [group, names] of Object.entries(groups)) {
    const order: string[] = [];
    for (const name of names.map((n) => n.replaceAll('-', '_'))) {
      const file = index.file(name);
      if (file) visit(file, order);
      else if (!builtin.has(name)) throw new Error(`kernel module ${name} is neither in modules.dep/modules.order nor built in`);
    }
    result[group] = order;
  }
  return result;
}

function inputsHash(busybox: string, groups: Record<string, string[]>): string {
  const hash = createHash('sha256');
  hash.update(`layout ${LAYOUT_VERSION}\n`);
  hash.update(readFileSync(INIT_SCRIPT));
  hash.update(readFileSync(AGENT_SCRIPT));
  hash.update(JSON.stringify(groups));
  const st = statSync(busybox);
  hash.update(`${busybox} ${st.size} ${st.mtimeMs}`);
  return hash.digest('hex').slice(0, 16);
}

async function buildInitramfs(out: string, modulesDir: string, busybox: string, groups: Record<string, string[]>): Promise<void> {
  const staging = `${out}.staging-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  try {
    for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'run', 'newroot', 'mnt', 'root', 'etc', 'lib/modules']) {
      mkdirSync(path.join(staging, d), { recursive: true });
    }
    copyFileSync(busybox, path.join(staging, 'bin/busybox'));
    copyFileSync(INIT_SCRIPT, path.join(staging, 'init'));
    copyFileSync(AGENT_SCRIPT, path.join(staging, 'agent.sh'));
    chmodSync(path.join(staging, 'bin/busybox'), 0o755);
    chmodSync(path.join(staging, 'init'), 0o755);
    for (const [group, files] of Object.entries(groups)) {
      const names: string[] = [];
      for (const file of files) names.push(await stageModule(path.join(modulesDir, file), path.join(staging, 'lib/modules')));
      writeFileSync(path.join(staging, 'lib/modules', `${group}.order`), names.map((n) => `${n}\n`).join(''));
    }
    const list = walk(staging).join('\n');
    const tmp = `${out}.tmp-${process.pid}`;
    await runProgram(requireProgram('cpio'), ['-o', '-H', 'newc', '-R', '0:0', '--quiet', '-O', tmp], { cwd: staging, input: `${list}\n` });
    renameSync(tmp, out);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

/** Copy one module, decompressing it: busybox insmod takes plain .ko files only. */
async function stageModule(source: string, intoDir: string): Promise<string> {
  const base = path.basename(source);
  const target = path.join(intoDir, base);
  copyFileSync(source, target);
  if (base.endsWith('.ko')) return base;
  if (base.endsWith('.ko.xz')) await runProgram(requireProgram('xz'), ['-d', '-f', target]);
  else if (base.endsWith('.ko.zst')) await runProgram(requireProgram('zstd'), ['-d', '-f', '-q', '--rm', target]);
  else if (base.endsWith('.ko.gz')) await runProgram('gzip', ['-d', '-f', target]);
  else throw new Error(`unknown module file type: ${source}`);
  return base.replace(/\.(xz|zst|gz)$/, '');
}

/** Paths relative to `root`, each directory before its contents, as cpio wants them. */
function walk(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(path.join(root, rel), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const p = rel ? `${rel}/${entry.name}` : entry.name;
    out.push(p);
    if (entry.isDirectory()) out.push(...walk(root, p));
  }
  return out;
}
