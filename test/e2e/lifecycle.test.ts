import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findVirtiofsd } from '../../src/host/virtiofsd.js';
import { QemuAdapter } from '../../src/vmm/qemu.js';
import { processesMatching } from '../../src/testbed/processes.js';
import { QEMU_GUEST_MOUNT, World } from '../../src/testbed/world.js';
import { bootPortalVm, type PortalVm } from '../../src/testbed/qemu/portal-vm.js';

/**
 * What happens to a VM's share when the VM reboots, when QEMU dies, when
 * virtiofsd dies, and when the VM was started with the share already there.
 */
let world: World;
let files: string;
const booted: PortalVm[] = [];

beforeAll(async () => {
  world = await World.start([
    { name: 'work', label: 'Work', qemu: true },
    { name: 'lab', label: 'Lab', qemu: true },
  ]);
  files = path.join(world.root, 'alice');
  world.hostDir(files);
});
afterAll(async () => {
  await Promise.allSettled(booted.map((vm) => vm.guest.cleanup()));
  await world?.stop();
});

async function boot(name: string, extraQemuArgs: string[] = []): Promise<PortalVm> {
  const vm = await bootPortalVm(world, name, { extraQemuArgs });
  booted.push(vm);
  return vm;
}

function grantFile(name: string, content: string): string {
  const p = world.hostFile(path.join(files, name), content);
  world.dialog.behave(() => ({ response: 0, uris: [`file://${p}`] }));
  return p;
}

async function vmState(name: string): Promise<{ connected: boolean; share: string; detail: string }> {
  const { vms } = JSON.parse((await world.cli(['vms', '--json'])).stdout) as { vms: { name: string; connected: boolean; share: string; detail: string }[] };
  return vms.find((v) => v.name === name)!;
}

const alive = (pid: number | undefined) => pid !== undefined && existsSync(`/proc/${pid}`);

describe('VM lifecycle', () => {
  it('after a VM reboot its grant is readable again once the share is plugged back in', async () => {
    const first = await boot('work');
    grantFile('report.txt', 'still yours after a reboot');
    const opened = (await first.app(['open', 'Open Report'])).files[0]!;
    expect(opened.content).toBe('still yours after a reboot');
    await first.shutdown();

    const again = await boot('work');
    // Nobody asks for a file this time: the daemon plugs the share back in
    // because the VM has grants, and the guest's mount agent mounts it.
    await expect.poll(async () => again.sh(`cat ${opened.path} 2>/dev/null || true`), { timeout: 30_000, interval: 500 }).toBe('still yours after a reboot');
    await again.shutdown();
  });

  it('when QEMU dies, the virtiofsd that served it exits, and nothing of that VM is left running', async () => {
    const vm = await boot('work');
    grantFile('a.txt', 'a');
    await vm.app(['open', 'Open']);
    const share = world.vmPaths('work').share;
    const servedBy = findVirtiofsd(share);
    const qemu = vm.guest.pids.qemu;
    expect(alive(servedBy) && alive(qemu)).toBe(true);
    process.kill(qemu!, 'SIGKILL');
    await expect.poll(() => alive(servedBy), { timeout: 15_000 }).toBe(false);
    await vm.guest.cleanup();
    expect(processesMatching(vm.guest.workDir)).toEqual([]);
    // A fresh virtiofsd listens for the VM's next start; the daemon says so.
    await expect.poll(async () => (await vmState('work')).share, { timeout: 10_000 }).toBe('ready');
    expect(findVirtiofsd(share)).not.toBe(servedBy);
  });

  it('when virtiofsd dies under a plugged share, the share is marked failed in plain words', async () => {
    const vm = await boot('work');
    grantFile('b.txt', 'b');
    await vm.app(['open', 'Open']);
    const pid = findVirtiofsd(world.vmPaths('work').share)!;
    process.kill(pid, 'SIGKILL');
    await expect.poll(() => world.daemonLog.some((l) => l.includes('SHARE FAILED') && l.includes('"vm":"work"')), { timeout: 10_000 }).toBe(true);
    const state = await vmState('work');
    expect(state.share).toBe('failed');
    // With virtiofsd's last log line in parentheses when it wrote one as it went (e.g. "virtio_loop: Unexpected poll revents 11").
    expect(state.detail).toMatch(/virtiofsd was killed by SIGKILL( \([^)]*\))?\. The share of VM "work" is dead: .* Stop the VM, then start it again\./);
    expect((await world.cli(['vms'])).stdout).toMatch(/work: virtiofsd was killed by SIGKILL/);
    // The guest cannot recover from this (QEMU 7.2 has no reconnect): stop it.
    process.kill(vm.guest.pids.qemu!, 'SIGKILL');
    await vm.guest.cleanup();
    await expect.poll(async () => (await vmState('work')).share, { timeout: 15_000 }).toBe('ready');
  });

  it('a VM started with the share already attached is left as it is', async () => {
    const share = world.vmPaths('lab').share;
    const vm = await boot('lab', ['-chardev', `socket,id=docboot,path=${share}`, '-device', 'vhost-user-fs-pci,id=docboot,chardev=docboot,tag=xdp-vm-doc,bus=rp2']);
    grantFile('c.txt', 'given to a VM that booted with its share');
    const r = await vm.app(['open', 'Open']);
    expect(r.files[0]).toMatchObject({ path: expect.stringMatching(new RegExp(`^${QEMU_GUEST_MOUNT}/`)), content: 'given to a VM that booted with its share' });
    expect(world.daemonLog.some((l) => l.includes('"vm":"lab"') && l.includes('already has the document share'))).toBe(true);
    const qmp = new QemuAdapter(vm.guest.qmp);
    const docShares = (await qmp.listShares()).filter((s) => s.tag === 'xdp-vm-doc');
    expect(docShares).toEqual([expect.objectContaining({ deviceId: 'docboot' })]);
    await vm.shutdown();
  });
});
