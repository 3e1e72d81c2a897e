import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { QemuAdapter } from '../src/vmm/qemu.js';
import { startVirtiofsd } from '../src/testbed/qemu/virtiofsd.js';
import { bootPortalVm, type AppResult, type PortalVm } from '../src/testbed/qemu/portal-vm.js';
import { lastMarks } from '../src/testbed/hops.js';
import { World } from '../src/testbed/world.js';
import { BENCH_CONFIG, summarize, type Summary } from './stats.js';

/**
 * The VM figures, in one booted guest (TCG here):
 *  - plug-in → readable: a new grant on an unplugged share, through the
 *    product's path (chardev-add, device_add, the guest's mount agent, a read);
 *  - response → first byte: a new grant on a share already plugged in;
 *  - 256 MiB sequential reads in the guest through the document view, through
 *    a folder share (`xdp-vm share add`: the daemon's own unprivileged
 *    virtiofsd, plugged in and mounted by the product's path), through a
 *    folder shared by hand with a root virtiofsd and cache=none (the
 *    document share's cache), and on the host itself.
 */
export interface VmBench {
  accel: string;
  plugToReadable: Summary;
  responseToFirstByte: Summary;
  read256: { documentView: Summary; folderShare: Summary; directShareNone: Summary; hostRead: Summary };
}

const MiB = 1024 * 1024;

/** dd in the guest, from a cold guest page cache (cache=auto would otherwise serve repeats from memory); MiB/s by the guest's own clock. */
async function guestRead(vm: PortalVm, file: string): Promise<number> {
  const out = await vm.sh(`echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s%N); dd if=${file} of=/dev/null bs=1M 2>/dev/null; e=$(date +%s%N); echo $(( (e-s)/1000 ))`, 300_000);
  return 256 / (Number(out.trim()) / 1e6);
}

function hostRead(file: string): number {
  const t0 = performance.now();
  const n = readFileSync(file).length;
  return n / MiB / ((performance.now() - t0) / 1000);
}

async function grantAndRead(world: World, vm: PortalVm, file: string): Promise<{ app: AppResult; host: Map<string, number>; guest: Map<string, number> }> {
  world.dialog.behave(() => ({ response: 0, uris: [`file://${file}`] }));
  const from = world.daemonLog.length;
  const app = await vm.app(['open', 'Bench']);
  if (app.response !== 0 || app.files[0]?.readMs === undefined) throw new Error(`bench grant failed: ${JSON.stringify(app)}`);
  const guest = lastMarks((await vm.sh('tail -200 /run/session.log')).split('\n'), app.t0);
  return { app, host: lastMarks(world.daemonLog.slice(from), 0), guest };
}

export async function benchVm(opts: { plugs: number; grants: number; reads: number }): Promise<VmBench> {
  // The hop marks these figures come from are debug lines.
  const level = process.env.XDP_VM_LOG_LEVEL;
  process.env.XDP_VM_LOG_LEVEL = 'debug';
  const world = await World.start([{ name: 'bench', qemu: true }], { config: BENCH_CONFIG }).finally(() => {
    if (level === undefined) delete process.env.XDP_VM_LOG_LEVEL;
    else process.env.XDP_VM_LOG_LEVEL = level;
  });
  const vm = await bootPortalVm(world, 'bench', { memMiB: 1024, rootPorts: 3 });
  try {
    const dir = path.join(world.root, 'files');
    mkdirSync(dir);
    const small = (i: number) => {
      const p = path.join(dir, `f${i}.txt`);
      writeFileSync(p, `file ${i}`);
      return p;
    };
    await grantAndRead(world, vm, small(-1)); // starts the portals and plugs the share in

    // Plug-in → readable: unplug (revoke everything), then a new grant plugs it back.
    const plug: number[] = [];
    for (let i = 0; i < opts.plugs; i++) {
      await world.cli(['grants', 'revoke', 'bench', '--all']);
      const { app, host } = await grantAndRead(world, vm, small(i));
      plug.push(host.get('host.share-ready')! - host.get('host.granted')! + app.files[0]!.readMs!);
    }

    // Response → first byte on a plugged share: the link's one way (half the
    // round trip the guest saw minus what the host spent), then the guest's
    // frontend passing the answer to the app, then the app's first read.
    const first: number[] = [];
    for (let i = 0; i < opts.grants; i++) {
      const { app, host, guest } = await grantAndRead(world, vm, small(100 + i));
      const rtt = guest.get('guest.answered')! - guest.get('guest.received')! - (host.get('host.share-ready')! - host.get('host.received')!);
      first.push(rtt / 2 + (app.t1 - guest.get('guest.answered')!) + app.files[0]!.readMs!);
    }

    // 256 MiB: the same file through the document view and through a direct share.
    const big = path.join(dir, 'big.bin');
    writeFileSync(big, Buffer.alloc(256 * MiB, 0x5a));
    const granted = (await grantAndRead(world, vm, big)).app.files[0]!.path;
    // The folder shared whole, as a user does it: xdp-vm share add.
    await world.cli(['share', 'add', 'bench', world.own(dir), '--name', 'bench-files', '--read-only']);
    const folder: number[] = [];
    for (let i = 0; i < opts.reads; i++) folder.push(await guestRead(vm, '/run/xdp-vm/shares/bench-files/big.bin'));
    await world.cli(['share', 'remove', 'bench', 'bench-files']);
    // And by hand with the document share's cache (none), for comparison.
    const qemu = new QemuAdapter(vm.guest.qmp);
    const direct = { none: [] as number[] };
    for (const cache of ['none'] as const) {
      const sock = path.join(world.root, `direct-${cache}.sock`);
      const daemon = await startVirtiofsd({ name: `bench-direct-${cache}`, socketPath: sock, sourceDir: dir, cache });
      try {
        await qemu.attachShare({ id: `direct${cache}`, tag: `direct${cache}`, socketPath: sock, queueSize: 1024 });
        await vm.sh(`mkdir -p /run/direct-${cache} && for i in $(seq 50); do mount -t virtiofs direct${cache} /run/direct-${cache} 2>/dev/null && break; sleep 0.1; done`);
        for (let i = 0; i < opts.reads; i++) direct[cache].push(await guestRead(vm, `/run/direct-${cache}/big.bin`));
        await vm.sh(`umount /run/direct-${cache}`);
        await qemu.detachShare(`direct${cache}`);
      } finally {
        await daemon.stop();
      }
    }
    const view: number[] = [];
    const hostSide: number[] = [];
    for (let i = 0; i < opts.reads; i++) {
      view.push(await guestRead(vm, granted));
      hostSide.push(hostRead(big));
    }
    return {
      accel: `${vm.guest.accel.accel} (${vm.guest.accel.why})`,
      plugToReadable: summarize(plug),
      responseToFirstByte: summarize(first),
      read256: { documentView: summarize(view), folderShare: summarize(folder), directShareNone: summarize(direct.none), hostRead: summarize(hostSide) },
    };
  } finally {
    await world.cli(['grants', 'revoke', 'bench', '--all']).catch(() => undefined);
    await vm.shutdown().catch(() => vm.guest.cleanup());
    await world.stop();
  }
}
