import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Service } from '../../src/exec.js';
import type { VmmEvent } from '../../src/vmm/adapter.js';
import { QemuAdapter } from '../../src/vmm/qemu.js';
import type { QmpEvent } from '../../src/vmm/qmp.js';
import { processesMatching } from '../../src/testbed/processes.js';
import { startVirtiofsd } from '../../src/testbed/qemu/virtiofsd.js';
import { bootGuest, chooseAccel, type Guest } from '../../src/testbed/qemu/vm.js';
import { isAlive } from '../../src/proc.js';

const SLOW = 120_000;


describe('chooseAccel', () => {
  it('picks TCG on a PVM host even though /dev/kvm exists', () => {
    const choice = chooseAccel({}, (p) => p === '/sys/module/kvm_pvm' || p === '/dev/kvm', () => true);
    expect(choice).toMatchObject({ accel: 'tcg' });
    expect(choice.why).toMatch(/kvm_pvm/);
  });

  it('picks KVM where /dev/kvm is usable, TCG where it is absent, and obeys the override', () => {
    expect(chooseAccel({}, (p) => p === '/dev/kvm', () => true).accel).toBe('kvm');
    expect(chooseAccel({}, () => false).accel).toBe('tcg');
    expect(chooseAccel({ XDP_VM_E2E_ACCEL: 'tcg' }, () => true, () => true)).toMatchObject({ accel: 'tcg', why: /forced/ });
  });
});

describe('a guest booted with the host root', () => {
  let guest: Guest;
  let dir: string;
  const daemons: Service[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-harness-test-'));
    guest = await bootGuest({
      name: 'harness',
      rootPorts: 2,
      serialPorts: [{ name: 'org.xdpvm.test', socketPath: path.join(dir, 'port.sock') }],
    });
    const t = guest.timings;
    console.info(`[timing] boot (${guest.accel.accel}): qmp ${t.qmpMs} ms, /init ${t.initMs} ms, modules ${t.modulesMs} ms, agent ready ${t.agentReadyMs} ms`);
  }, SLOW);

  afterAll(async () => {
    await guest?.cleanup();
    for (const d of daemons) await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs commands through the agent, with status and exact output', async () => {
    expect((await guest.agent.check('uname -r')).trim()).toMatch(/^\d+\.\d+\.\d+-\d+-amd64$/);
    expect(await guest.agent.run("printf 'no newline'; echo oops >&2; exit 3")).toEqual({ stdout: 'no newline', stderr: 'oops\n', status: 3 });
    expect(await guest.agent.check('grep " / " /proc/mounts')).toMatch(/^hostroot \/ virtiofs ro/);
  }, SLOW);

  it('gives a test-declared virtio-serial port a /dev/virtio-ports name that carries bytes both ways', async () => {
    const host = net.createConnection({ path: path.join(dir, 'port.sock') });
    await once(host, 'connect');
    const received = once(host, 'data');
    await guest.agent.check('echo pong > /dev/virtio-ports/org.xdpvm.test');
    expect(String((await received)[0])).toBe('pong\n');
    const reading = guest.agent.check('head -n 1 /dev/virtio-ports/org.xdpvm.test');
    setTimeout(() => host.write('ping\n'), 300);
    expect(await reading).toBe('ping\n');
    host.destroy();
  }, SLOW);

  it("runs the host's node from the shared root", async () => {
    const t = Date.now();
    expect(await guest.agent.check("node -e 'console.log(1+1)'", { timeoutMs: 60_000 })).toBe('2\n');
    console.info(`[timing] node -e, cold: ${Date.now() - t} ms`);
  }, SLOW);

  it('has vsock_loopback loaded, and AF_VSOCK works over it', async () => {
    await guest.agent.check('test -d /sys/module/vsock_loopback && test -d /sys/module/vmw_vsock_virtio_transport');
    if ((await guest.agent.run('test -x /usr/bin/python3')).status !== 0) {
      console.info('[note] no /usr/bin/python3 on the host root: AF_VSOCK echo over loopback not exercised');
      return;
    }
    const echo = [
      'import socket',
      's = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); s.bind((socket.VMADDR_CID_ANY, 5123)); s.listen(1)',
      'c = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); c.connect((1, 5123))  # VMADDR_CID_LOCAL; older Pythons lack the name',
      'a, _ = s.accept(); c.sendall(b"ping"); print(a.recv(4).decode())',
    ].join('\n');
    expect(await guest.agent.check(`python3 -c '${echo}'`, { timeoutMs: 60_000 })).toBe('ping\n');
  }, SLOW);

  it('hot-plugs a virtiofs share the guest can read, unplugs it after unmount, and plugs it again', async () => {
    const source = path.join(dir, 'share');
    mkdirSync(source);
    const blob = randomBytes(256 * 1024);
    writeFileSync(path.join(source, 'blob.bin'), blob);
    writeFileSync(path.join(source, 'hello.txt'), 'hello from the host\n');
    const adapter = new QemuAdapter(guest.qmp, { name: guest.name });
    const vmmEvents: VmmEvent[] = [];
    adapter.events.subscribe((e) => vmmEvents.push(e));

    const preexisting = await adapter.listShares();
    expect(preexisting).toEqual([{ id: undefined, tag: 'hostroot', deviceId: 'rootfs', location: 'pcie.0', attachedHere: false }]);

    for (const round of [1, 2]) {
      const socketPath = path.join(dir, `share-${round}.sock`);
      const daemon = await startVirtiofsd({ name: `virtiofsd-share-${round}`, socketPath, sourceDir: source });
      daemons.push(daemon);
      const t0 = Date.now();
      const attached = await adapter.attachShare({ id: 'docs', tag: 'docs', socketPath });
      const attachMs = Date.now() - t0;
      expect(attached).toMatchObject({ deviceId: 'xdpvm-fs-docs', location: 'rp1' });
      // The guest learns of the device asynchronously (ACPI): retry the mount briefly.
      const read = await guest.agent.check(
        'mkdir -p /tmp/docs; i=0; until mount -t virtiofs docs /tmp/docs 2>/dev/null; do ' +
          '[ $((i += 1)) -lt 100 ] || exit 1; sleep 0.05; done; sha256sum /tmp/docs/blob.bin; cat /tmp/docs/hello.txt',
      );
      const readMs = Date.now() - t0;
      expect(read).toBe(`${createHash('sha256').update(blob).digest('hex')}  /tmp/docs/blob.bin\nhello from the host\n`);
      expect((await adapter.listShares()).find((s) => s.id === 'docs')).toMatchObject({ tag: 'docs', location: 'rp1', attachedHere: true });

      const deleted: QmpEvent[] = [];
      const off = guest.qmp.onEvent((e) => e.event === 'DEVICE_DELETED' && deleted.push(e));
      let umountMs = 0;
      const t1 = Date.now();
      await adapter.detachShare('docs', {
        beforeDetach: async () => {
          await guest.agent.check('umount /tmp/docs');
          umountMs = Date.now() - t1;
        },
      });
      const unplugMs = Date.now() - t1 - umountMs;
      off();
      // The virtio-backend child goes first; only the second event names our device.
      expect(deleted.map((e) => e.data.device ?? e.data.path)).toEqual(['/machine/peripheral/xdpvm-fs-docs/virtio-backend', 'xdpvm-fs-docs']);
      expect(await daemon.exited).toEqual({ code: 0, signal: null });
      expect(await guest.agent.check('ls /sys/bus/virtio/drivers/virtiofs | grep -c ^virtio || true')).toBe('1\n');
      console.info(
        `[timing] hot-plug round ${round}: QMP attach ${attachMs} ms, attach→file read in guest ${readMs} ms; ` +
          `guest umount ${umountMs} ms, device_del→DEVICE_DELETED→chardev-remove ${unplugMs} ms`,
      );
    }
    expect(vmmEvents).toEqual([
      { type: 'device-detached', kind: 'share', id: 'docs', deviceId: 'xdpvm-fs-docs', expected: true },
      { type: 'device-detached', kind: 'share', id: 'docs', deviceId: 'xdpvm-fs-docs', expected: true },
    ]);
    await adapter.close();
  }, SLOW);

  it('reports a share the guest ejected by itself, and frees its chardev', async () => {
    const source = path.join(dir, 'eject');
    mkdirSync(source);
    const socketPath = path.join(dir, 'eject.sock');
    const daemon = await startVirtiofsd({ name: 'virtiofsd-eject', socketPath, sourceDir: source });
    daemons.push(daemon);
    const adapter = new QemuAdapter(guest.qmp, { name: guest.name });
    const detached = new Promise<VmmEvent>((resolve) => adapter.events.subscribe(resolve));
    await adapter.attachShare({ id: 'eject', tag: 'eject', socketPath });
    // ACPI hot-plug gives each root port a slot; powering it off is the guest's "eject".
    const ejectScript = [
      'for i in $(seq 50); do for s in /sys/bus/pci/slots/*; do',
      '  read -r addr < "$s/address"; read -r id < "/sys/bus/pci/devices/$addr.0/device" 2>/dev/null || continue',
      '  [ "$id" = 0x105a ] && echo 0 > "$s/power" && echo "ejected $addr" && exit 0',
      'done; sleep 0.05; done; exit 1',
    ].join('\n');
    expect(await guest.agent.check(ejectScript)).toMatch(/^ejected /);
    expect(await detached).toEqual({ type: 'device-detached', kind: 'share', id: 'eject', deviceId: 'xdpvm-fs-eject', expected: false });
    expect(await daemon.exited).toEqual({ code: 0, signal: null });
    expect((await adapter.listShares()).map((s) => s.tag)).toEqual(['hostroot']);
    await adapter.close();
  }, SLOW);

  it('shuts down and leaves no QEMU or virtiofsd behind', async () => {
    const pids = [guest.pids.qemu, guest.pids.rootVirtiofsd, ...daemons.map((d) => d.pid)];
    expect(pids.every((p) => p !== undefined)).toBe(true);
    const report = await guest.shutdown();
    console.info(`[timing] shutdown: ${report.ms} ms (graceful: ${report.graceful})`);
    expect(report).toMatchObject({ graceful: true, qemuExit: { code: 0 } });
    expect(pids.filter(isAlive)).toEqual([]);
    expect(processesMatching(guest.workDir)).toEqual([]);
    expect(processesMatching(dir)).toEqual([]);
    expect(existsSync(guest.workDir)).toBe(false);
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(guest.workDir);
  }, SLOW);
});

describe('a guest without the host root', () => {
  it('runs its agent from the initramfs busybox and powers off', async () => {
    const guest = await bootGuest({ name: 'harness-initramfs', hostRoot: false, modules: ['core'] });
    try {
      expect(guest.pids.rootVirtiofsd).toBeUndefined();
      expect(await guest.agent.check('readlink -f /bin/sh')).toMatch(/busybox/);
      console.info(`[timing] initramfs-only boot, no USB modules: agent ready ${guest.timings.agentReadyMs} ms`);
      expect((await guest.shutdown()).graceful).toBe(true);
      expect(isAlive(guest.pids.qemu)).toBe(false);
    } finally {
      await guest.cleanup();
    }
  }, SLOW);
});
