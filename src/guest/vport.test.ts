import { closeSync, constants as fsConstants, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { runProgram } from '../exec.js';
import { EAGAIN, requireBinding, type NativeHandle } from '../transport/vsock-native.js';
import { findPort, openPort, portNameProblem } from './vport.js';

/** When set, the addon's openDevice answers with this instead (a port in a state no stand-in device has). */
let fakeOpen: ((path: string) => NativeHandle | number) | undefined;
vi.mock('../transport/vsock-native.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../transport/vsock-native.js')>();
  return {
    ...real,
    requireBinding: () => {
      const binding = real.requireBinding();
      return { ...binding, openDevice: (p: string) => (fakeOpen ? fakeOpen(p) : binding.openDevice(p)) };
    },
  };
});

/**
 * The guest end of a hot-plugged channel: findPort against a scratch sysfs
 * and /dev laid out as the guest kernel lays them out; openPort on a FIFO
 * opened read-write, which like a connected port is pollable, idle (EAGAIN)
 * until written, and here loops what is written back; and, for the states
 * no stand-in device has (EOF while the host is away, ENODEV once
 * unplugged), on a scripted handle. The real port is in the e2e test.
 */
let root: string;
let sysfs: string;
let dev: string;

beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'vport-'));
  sysfs = path.join(root, 'sys');
  dev = path.join(root, 'dev');
  mkdirSync(dev);
});
afterEach(() => {
  fakeOpen = undefined;
  rmSync(root, { recursive: true, force: true });
});

/** A port as the kernel shows it: its sysfs directory, its name once the host named it, its device node. */
function addPort(port: string, name: string | undefined, node = true): void {
  const dir = path.join(sysfs, 'class', 'virtio-ports', port);
  mkdirSync(dir, { recursive: true });
  if (name !== undefined) writeFileSync(path.join(dir, 'name'), `${name}\n`);
  if (node) writeFileSync(path.join(dev, port), '');
}

describe('findPort', () => {
  it('finds the node of the port with that name among others, unnamed ones included', async () => {
    addPort('vport0p1', 'org.xdpvm.agent');
    addPort('vport0p2', undefined);
    addPort('vport1p1', 'io.github.xdp_vm.usbip.b1d5');
    expect(await findPort('io.github.xdp_vm.usbip.b1d5', { sysfs, dev })).toBe(path.join(dev, 'vport1p1'));
  });

  it('waits for a hot-plugged port, and for its node after its sysfs entry', async () => {
    const found = findPort('io.github.xdp_vm.usbip.b1d5', { sysfs, dev, timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 60));
    addPort('vport0p3', 'io.github.xdp_vm.usbip.b1d5', false);
    await new Promise((r) => setTimeout(r, 60));
    writeFileSync(path.join(dev, 'vport0p3'), '');
    expect(await found).toBe(path.join(dev, 'vport0p3'));
  });

  it('times out naming the ports it saw, or the node that never came', async () => {
    addPort('vport0p1', 'org.xdpvm.agent');
    addPort('vport0p2', undefined);
    await expect(findPort('io.github.xdp_vm.usbip.b1d5', { sysfs, dev, timeoutMs: 50 })).rejects.toThrow(
      'virtio-serial port io.github.xdp_vm.usbip.b1d5: no port of that name appeared (ports: vport0p1=org.xdpvm.agent, vport0p2=(unnamed)) within 50 ms',
    );
    addPort('vport0p3', 'io.github.xdp_vm.usbip.b1d5', false);
    await expect(findPort('io.github.xdp_vm.usbip.b1d5', { sysfs, dev, timeoutMs: 50 })).rejects.toThrow(/virtio-ports\/vport0p3 names it, but .*dev\/vport0p3 did not appear within 50 ms/);
  });

  it('a guest without virtio_console (no class directory) is "no ports", not a crash', async () => {
    await expect(findPort('x', { sysfs, dev, timeoutMs: 30 })).rejects.toThrow(/no port of that name appeared \(ports: none\)/);
  });

  it('refuses a name that is not one plain path component', async () => {
    await expect(findPort('../vport0p1', { sysfs, dev })).rejects.toThrow(/must be 1 to 127 letters/);
    expect(portNameProblem('io.github.xdp_vm.usbip.b1d5')).toBeUndefined();
    expect(portNameProblem('-x')).toMatch(/starting with a letter or digit/);
  });
});

describe('openPort', () => {
  it('while the host end is not connected (read() is EOF at once) it waits, and proceeds once the host connects', async () => {
    let reads = 0;
    fakeOpen = () => fakeHandle(() => (++reads < 4 ? null : EAGAIN));
    const port = await openPort('/dev/vport1p1', { intervalMs: 5 });
    expect(reads).toBe(4);
    port.destroy();
  });

  it('says so when the host never connects, and closes the port again', async () => {
    const handle = fakeHandle(() => null);
    fakeOpen = () => handle;
    await expect(openPort('/dev/vport1p1', { hostTimeoutMs: 60, intervalMs: 5 })).rejects.toThrow('/dev/vport1p1: the host end of the port did not connect within 60 ms');
    expect(handle.closed).toBe(true);
  });

  it('an unplugged port and a port someone else holds are said in words', async () => {
    fakeOpen = () => fakeHandle(() => -constants.errno.ENODEV);
    await expect(openPort('/dev/vport1p1')).rejects.toThrow(/read ENODEV .*\(\/dev\/vport1p1\): the port was unplugged/);
    fakeOpen = () => -constants.errno.EBUSY;
    await expect(openPort('/dev/vport1p1')).rejects.toThrow(/open EBUSY .*\(\/dev\/vport1p1\): another process has the port open/);
  });

  it('once open, the host hanging up (EOF) ends and closes the stream; an unplug is an error naming the device', async () => {
    const { READABLE } = requireBinding();
    const script = (...answers: (Buffer | null | number)[]) => fakeHandle(() => (answers.length > 1 ? answers.shift()! : answers[0]!));
    const hangUp = script(EAGAIN, Buffer.from('last'), null);
    fakeOpen = () => hangUp;
    const port = await openPort('/dev/vport1p1');
    const got: string[] = [];
    port.on('data', (c: Buffer) => got.push(c.toString()));
    const closed = new Promise<void>((r) => port.once('close', () => r()));
    await new Promise((r) => setImmediate(r));
    hangUp.onevent?.(0, READABLE);
    await closed;
    expect(got).toEqual(['last']);
    expect(hangUp.closed).toBe(true);

    const unplugged = script(EAGAIN, -constants.errno.ENODEV);
    fakeOpen = () => unplugged;
    const again = await openPort('/dev/vport1p1');
    const failed = new Promise<Error>((r) => again.once('error', r));
    again.resume();
    await new Promise((r) => setImmediate(r));
    unplugged.onevent?.(0, READABLE);
    expect((await failed).message).toBe('read ENODEV (no such device) (/dev/vport1p1): the port was unplugged');
  });

  it('keeps the bytes its probe read: the host may speak first', async () => {
    const fifo = path.join(root, 'port');
    await runProgram('mkfifo', [fifo]);
    const host = openSync(fifo, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
    writeSync(host, 'hello');
    const port = await openPort(fifo);
    const first = await new Promise<Buffer>((r) => port.once('data', r));
    expect(first.toString()).toBe('hello');
    port.destroy();
    closeSync(host);
  });

  it('streams both ways with backpressure: 1 MiB through a FIFO 16 times smaller comes back identical', async () => {
    const fifo = path.join(root, 'port');
    await runProgram('mkfifo', [fifo]);
    const port = await openPort(fifo);
    const sent = Buffer.alloc(1 << 20);
    for (let i = 0; i < sent.length; i++) sent[i] = (i * 7 + (i >> 12)) & 0xff;
    const chunks: Buffer[] = [];
    let got = 0;
    const back = new Promise<void>((resolve) =>
      port.on('data', (c: Buffer) => {
        chunks.push(c);
        got += c.length;
        if (got >= sent.length) resolve();
      }),
    );
    port.end(sent);
    await back;
    expect(Buffer.concat(chunks).equals(sent)).toBe(true);
    port.destroy();
  });

  it('says which device it could not open, and why', async () => {
    await expect(openPort(path.join(dev, 'vport9p9'))).rejects.toThrow(/ENOENT.*vport9p9/);
    writeFileSync(path.join(dev, 'plain'), '');
    await expect(openPort(path.join(dev, 'plain'))).rejects.toThrow(/plain: cannot be watched for readiness .*is it a virtio-serial port\?/);
  });
});

/** A native handle whose read() is scripted, as a port in a given state answers; what VsockSocket needs besides. */
function fakeHandle(read: () => Buffer | null | number): NativeHandle & { closed: boolean } {
  return {
    closed: false,
    onevent: undefined,
    watch: () => 0,
    read,
    writev: () => EAGAIN,
    accept: () => -1,
    connectError: () => 0,
    shutdown: () => 0,
    localAddress: () => -1,
    close() {
      this.closed = true;
    },
    setRef: () => undefined,
    fd: () => -1,
  };
}
