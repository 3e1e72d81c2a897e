import { closeSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dependency, requireProgram, whichProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { openTap } from '../../src/native/fds.js';
import type { Service } from '../../src/exec.js';
import { baseMachineArgs, launchQemu, type LaunchedQemu } from '../../src/testbed/qemu/qemu-launch.js';
import { startVirtiofsd } from '../../src/testbed/qemu/virtiofsd.js';
import { ReadCapExceededError } from '../../src/vmm/json-lines.js';
import type { VmmEvent } from '../../src/vmm/adapter.js';
import { capabilitiesOf, lackOf } from '../../src/vmm/adapter.js';
import { QemuAdapter } from '../../src/vmm/qemu.js';
import { QmpClient, QmpError, type QmpEvent } from '../../src/vmm/qmp.js';

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: ['oob'] } };

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-qmp-test-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A scripted QMP peer, for what real QEMU cannot be made to do (misbehave). */
async function fakeQmp(onCommand: (msg: { execute: string; id: string }, sock: net.Socket) => void, greeting: unknown = GREETING) {
  const socketPath = path.join(dir, `fake-${Math.random().toString(36).slice(2)}.sock`);
  const server = net.createServer((sock) => {
    sock.write(`${JSON.stringify(greeting)}\r\n`);
    let buf = '';
    sock.on('data', (chunk) => {
      buf += chunk.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.execute === 'qmp_capabilities') sock.write(`${JSON.stringify({ return: {}, id: msg.id })}\r\n`);
        else onCommand(msg, sock);
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return { socketPath, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

function caught(promise: Promise<unknown>): Promise<QmpError> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (err: unknown) => {
      expect(err).toBeInstanceOf(QmpError);
      return err as QmpError;
    },
  );
}

describe('QmpClient against a scripted peer', () => {
  it('connect to a missing socket fails in phase connect and names the path', async () => {
    const err = await caught(new QmpClient().connect(path.join(dir, 'nope.sock')));
    expect(err.phase).toBe('connect');
    expect(err.reason).toBe('io');
    expect(err.message).toContain('nope.sock');
    expect(err.message).toMatch(/ENOENT/);
  });

  it('a greeting that is not QMP fails in phase negotiate', async () => {
    const peer = await fakeQmp(() => undefined, { hello: 'world' });
    const client = new QmpClient();
    const err = await caught(client.connect(peer.socketPath));
    expect(err.phase).toBe('negotiate');
    expect(err.reason).toBe('protocol');
    expect(client.state).toBe('idle');
    await peer.close();
  });

  it('routes replies by id when the peer answers out of order, and drops unmatched replies', async () => {
    const held: Array<{ id: string; execute: string }> = [];
    const peer = await fakeQmp((msg, sock) => {
      held.push(msg);
      if (held.length < 3) return;
      sock.write(`${JSON.stringify({ return: 'stray', id: 'nobody-asked' })}\n`);
      for (const m of held.reverse()) sock.write(`${JSON.stringify({ return: `answer to ${m.execute}`, id: m.id })}\n`);
    });
    const client = new QmpClient();
    await client.connect(peer.socketPath);
    const answers = await Promise.all(['a', 'b', 'c'].map((cmd) => client.execute(cmd)));
    expect(answers).toEqual(['answer to a', 'answer to b', 'answer to c']);
    expect(new Set(held.map((m) => m.id)).size).toBe(3);
    await client.disconnect();
    await peer.close();
  });

  it('a message over 10 MiB without newline drops the connection with a clear error', async () => {
    const peer = await fakeQmp((_msg, sock) => {
      const chunk = Buffer.alloc(1024 * 1024, 0x61);
      for (let i = 0; i < 11; i++) sock.write(chunk);
    });
    const client = new QmpClient();
    await client.connect(peer.socketPath);
    const disconnected = new Promise<QmpError | undefined>((resolve) => client.onDisconnect(resolve));
    const err = await caught(client.execute('query-huge'));
    expect(err.phase).toBe('execute');
    expect(err.command).toBe('query-huge');
    expect(err.reason).toBe('protocol');
    expect(err.cause).toBeInstanceOf(ReadCapExceededError);
    expect(err.message).toMatch(/without a newline.*10485760 bytes/);
    expect((await disconnected)?.reason).toBe('protocol');
    expect(client.state).toBe('idle');
    await peer.close();
  });

  it('a peer that hangs up mid-command rejects the pending command with phase and cause', async () => {
    const peer = await fakeQmp((_msg, sock) => sock.destroy());
    const client = new QmpClient();
    await client.connect(peer.socketPath);
    const err = await caught(client.execute('query-status'));
    expect(err).toMatchObject({ phase: 'execute', reason: 'disconnected', command: 'query-status' });
    expect(err.message).toContain('QEMU closed the connection');
    await peer.close();
  });

  it('a command with no reply times out without wedging later commands', async () => {
    const peer = await fakeQmp((msg, sock) => {
      if (msg.execute !== 'ignored') sock.write(`${JSON.stringify({ return: 'ok', id: msg.id })}\n`);
    });
    const client = new QmpClient();
    await client.connect(peer.socketPath);
    const err = await caught(client.execute('ignored', undefined, { timeoutMs: 100 }));
    expect(err.reason).toBe('timeout');
    await expect(client.execute('next')).resolves.toBe('ok');
    await client.disconnect();
    await peer.close();
  });
});

describe('QemuAdapter events', () => {
  it('reports vmm-gone and ends its event stream when the QMP connection drops', async () => {
    const peer = await fakeQmp((_msg, sock) => sock.destroy());
    const adapter = await QemuAdapter.connect(peer.socketPath, { name: 'fake' });
    const events = adapter.events.iterate();
    await expect(adapter.listShares()).rejects.toMatchObject({ phase: 'execute', reason: 'disconnected', command: 'qom-list' });
    const seen: VmmEvent[] = [];
    for await (const e of events) seen.push(e);
    expect(seen).toEqual([{ type: 'vmm-gone', reason: expect.stringContaining('QEMU closed the connection') }]);
    await adapter.close();
    await peer.close();
  });

  it('rejects ids and tags QEMU or the guest could not take', async () => {
    const adapter = new QemuAdapter(new QmpClient());
    await expect(adapter.attachShare({ id: 'a,b', tag: 't', socketPath: '/x' })).rejects.toThrow(/must start with a letter/);
    await expect(adapter.attachShare({ id: 'ok', tag: 'x'.repeat(37), socketPath: '/x' })).rejects.toThrow(/1 to 36 bytes/);
    await expect(adapter.detachShare('../etc')).rejects.toThrow(/must start with a letter/);
  });
});

const missing = ['qemu-system-x86_64', 'virtiofsd'].filter((id) => !whichProgram(dependency(id).candidates));

it('has QEMU and virtiofsd installed (scripts/setup.sh installs them)', () => {
  expect(missing, `missing: ${missing.join(', ')}; apt-get install ${missing.map((id) => dependency(id).debianPackage).join(' ')}`).toEqual([]);
});

describe('QmpClient and QemuAdapter against a real QEMU (-S, no guest)', () => {
  let vm: LaunchedQemu;
  let bootShareDaemon: Service;
  const daemons: Service[] = [];

  beforeAll(async () => {
    const share = path.join(dir, 'boot-share');
    rmSync(share, { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.mkdir(share));
    writeFileSync(path.join(share, 'hello.txt'), 'hello\n');
    // A share the VM is started with, as a VM launched by another tool would be.
    bootShareDaemon = await startVirtiofsd({ name: 'virtiofsd-boot', socketPath: path.join(dir, 'boot.sock'), sourceDir: share });
    vm = await launchQemu({
      name: 'qmp-test',
      qmpSocket: path.join(dir, 'qmp.sock'),
      args: [
        ...baseMachineArgs({ accel: 'tcg', memMiB: 128, rootPorts: 2 }),
        '-S',
        '-chardev', `socket,id=bootfs,path=${path.join(dir, 'boot.sock')}`,
        '-device', 'vhost-user-fs-pci,id=xdpvm-fs-boot,chardev=bootfs,tag=bootshare',
      ],
    });
  }, 30_000);

  afterAll(async () => {
    await vm?.stop();
    for (const d of [bootShareDaemon, ...daemons]) await d?.stop();
  });

  it('greets and negotiates', () => {
    expect(vm.qmp.state).toBe('running');
    expect(vm.qmp.greeting?.QMP.version.qemu.major).toBeGreaterThanOrEqual(7);
  });

  it('query-status reports a paused prelaunch VM', async () => {
    await expect(vm.qmp.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch', running: false });
  });

  it("an execute error carries QEMU's class and desc and phase execute", async () => {
    const err = await caught(vm.qmp.execute('device_del', { id: 'no-such-device' }));
    expect(err).toMatchObject({ phase: 'execute', reason: 'qemu-error', command: 'device_del', errorClass: 'DeviceNotFound' });
    expect(err.errorDesc).toContain('no-such-device');
  });

  it('routes concurrent replies to the right callers', async () => {
    const [status, version, peripherals, failed] = await Promise.all([
      vm.qmp.execute('query-status'),
      vm.qmp.execute('query-version'),
      vm.qmp.execute('qom-list', { path: '/machine/peripheral' }),
      vm.qmp.execute('qom-get', { path: '/machine/peripheral/rp1', property: 'nope' }).catch((e: unknown) => e),
    ]);
    expect(status).toMatchObject({ status: 'prelaunch' });
    expect(version).toMatchObject({ qemu: { major: vm.qmp.greeting?.QMP.version.qemu.major } });
    expect(peripherals).toEqual(expect.arrayContaining([{ name: 'rp1', type: 'child<pcie-root-port>' }]));
    expect(failed).toBeInstanceOf(QmpError);
  });

  it('cont and stop produce RESUME and STOP events, through waitForEvent and the iterator', async () => {
    const seen: QmpEvent[] = [];
    const stopIterating = new AbortController();
    const iterated = (async () => {
      for await (const e of vm.qmp.events({ signal: stopIterating.signal })) seen.push(e);
    })();
    const resumed = vm.qmp.waitForEvent((e) => e.event === 'RESUME', { timeoutMs: 5000 });
    await vm.qmp.execute('cont');
    expect((await resumed).event).toBe('RESUME');
    const stopped = vm.qmp.waitForEvent((e) => e.event === 'STOP', { timeoutMs: 5000 });
    await vm.qmp.execute('stop');
    expect((await stopped).event).toBe('STOP');
    stopIterating.abort();
    await iterated;
    expect(seen.map((e) => e.event)).toEqual(['RESUME', 'STOP']);
    await expect(vm.qmp.waitForEvent(() => false, { timeoutMs: 50 })).rejects.toMatchObject({ reason: 'timeout' });
  });

  it('recognises the share the VM was started with', async () => {
    const adapter = new QemuAdapter(vm.qmp, { name: 'qmp-test' });
    expect(await adapter.listShares()).toEqual([
      { id: 'boot', tag: 'bootshare', deviceId: 'xdpvm-fs-boot', location: 'pcie.0', attachedHere: false },
    ]);
    await expect(adapter.attachShare({ id: 'boot', tag: 'x', socketPath: '/nonexistent' })).rejects.toThrow(/already in the VM/);
    await adapter.close();
  });

  it('hot-plugs vhost-user-fs-pci onto free root ports; unplug does not complete without a guest', async () => {
    const adapter = new QemuAdapter(vm.qmp, { name: 'qmp-test' });
    const src = path.join(dir, 'hp-share');
    await import('node:fs/promises').then((fs) => fs.mkdir(src, { recursive: true }));
    for (const n of [1, 2]) {
      daemons.push(await startVirtiofsd({ name: `virtiofsd-hp${n}`, socketPath: path.join(dir, `hp${n}.sock`), sourceDir: src }));
    }
    expect(await adapter.freeRootPorts()).toEqual(['rp1', 'rp2']);
    const first = await adapter.attachShare({ id: 'hp1', tag: 'share1', socketPath: path.join(dir, 'hp1.sock') });
    expect(first).toMatchObject({ deviceId: 'xdpvm-fs-hp1', location: 'rp1' });
    expect(await adapter.freeRootPorts()).toEqual(['rp2']);
    await adapter.attachShare({ id: 'hp2', tag: 'share2', socketPath: path.join(dir, 'hp2.sock') });
    await expect(adapter.attachShare({ id: 'hp3', tag: 'share3', socketPath: path.join(dir, 'hp2.sock') })).rejects.toThrow(
      /no free pcie-root-port/,
    );
    const shares = await adapter.listShares();
    expect(shares.filter((s) => s.attachedHere).map((s) => [s.tag, s.location])).toEqual([
      ['share1', 'rp1'],
      ['share2', 'rp2'],
    ]);
    // Measured: with ACPI hot-plug the unplug waits for the guest's _EJ0, which a
    // paused (or OS-less) VM never runs; the full cycle is in the guest e2e tests.
    const hookCalls: string[] = [];
    const started = Date.now();
    await expect(
      adapter.detachShare('hp1', { timeoutMs: 1500, beforeDetach: async () => void hookCalls.push('unmount') }),
    ).rejects.toThrow(/did not report xdpvm-fs-hp1 deleted within 1500 ms/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
    expect(hookCalls).toEqual(['unmount']);
    const busy = await caught(vm.qmp.execute('chardev-remove', { id: 'xdpvm-fsc-hp1' }));
    expect(busy.errorDesc).toMatch(/busy/);
    await adapter.close();
  }, 30_000);

  it('has shares, USB and NICs, and lacks none of them', async () => {
    const adapter = new QemuAdapter(vm.qmp);
    expect(capabilitiesOf(adapter)).toEqual(['shares', 'usb', 'net']);
    expect(lackOf(adapter, 'usb')).toBeUndefined();
    expect(lackOf(adapter, 'net')).toBeUndefined();
    await adapter.close();
  });
});

describe('a tap NIC hot-plugged into a real QEMU from a descriptor (getfd over SCM_RIGHTS)', () => {
  // The helper's part (creating the tap for a user, opening its queue) is in
  // privileged-helper.as-root.test.ts; here root stands in for it, and QEMU
  // is given nothing but the descriptor.
  const TAP = 'xdpvm9876';
  let vm: LaunchedQemu;
  const carrier = () => readFileSync(`/sys/class/net/${TAP}/carrier`, 'utf8').trim();

  beforeAll(async () => {
    await runProgram(requireProgram('ip'), ['tuntap', 'add', 'dev', TAP, 'mode', 'tap']);
    await runProgram(requireProgram('ip'), ['link', 'set', 'dev', TAP, 'up']);
    vm = await launchQemu({ name: 'qmp-tap-test', qmpSocket: path.join(dir, 'qmp-tap.sock'), args: [...baseMachineArgs({ accel: 'tcg', memMiB: 128, rootPorts: 1 }), '-S'] });
  }, 30_000);

  afterAll(async () => {
    await vm?.stop();
    await runProgram(requireProgram('ip'), ['tuntap', 'del', 'dev', TAP, 'mode', 'tap']).catch(() => undefined);
  });

  it('getfd with no descriptor attached gets QEMU\'s own refusal', async () => {
    const err = await caught(vm.qmp.execute('getfd', { fdname: 'nothing' }));
    expect(err.errorDesc).toMatch(/SCM_RIGHTS/);
  });

  it('QEMU holds the tap\'s queue after we close ours; netdev_add named the fd, not the tap', async () => {
    const adapter = new QemuAdapter(vm.qmp, { name: 'qmp-tap-test' });
    // No queue attached: a persistent tap has no carrier.
    expect(carrier()).toBe('0');
    const fd = openTap(TAP);
    expect(carrier()).toBe('1');
    const nic = await adapter.attachNet({ id: 'lan', backend: { type: 'tap', tapName: TAP, fd }, mac: '02:00:00:00:98:76' });
    closeSync(fd);
    expect(nic).toMatchObject({ deviceId: 'xdpvm-net-lan', location: 'rp1' });
    expect(carrier()).toBe('1');
    const nets = (await adapter.listNet()).filter((n) => n.id === 'lan');
    expect(nets).toHaveLength(1);
    // The monitor no longer holds the name: netdev_add took the descriptor.
    const again = await caught(vm.qmp.execute('closefd', { fdname: 'xdpvm-tapfd-lan' }));
    expect(again.errorDesc).toMatch(/not found/i);
    await adapter.close();
  }, 30_000);

  it('a tap that does not exist is a plain error, and opening it as root does not create one', () => {
    expect(() => openTap('xdpvm9877')).toThrow(/attaching to tap xdpvm9877: ENODEV/);
    // Root could have made one by that name; it must not have.
    expect(existsSync('/sys/class/net/xdpvm9877')).toBe(false);
  });
});
