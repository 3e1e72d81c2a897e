import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeChannel, connectChannel, listChannels, openChannel } from '../../src/vmm/qemu-channel.js';
import { cachedDebianNode18, debianNode18Version, ensureDebianNode18, node18GuestScript, overlayModules } from '../../src/testbed/qemu/debian-node18.js';
import { bootGuest, checkoutPath, type Guest } from '../../src/testbed/qemu/vm.js';

/**
 * A raw byte channel hot-plugged into a real TCG guest over QMP
 * (src/vmm/qemu-channel.ts), the way a USB/IP stream will ride a VM's own
 * link: in the guest, node with the guest module src/guest/vport.ts (from
 * dist/, as the guest sees this checkout) finds the port by its name and
 * echoes every byte back. 4 MiB of a known pattern go out and come back
 * identical, with backpressure at every hop. Closing unplugs the port from
 * the guest and takes the chardev and its socket away; the same id opens
 * again, this time with the host end dropped before the guest opens the
 * port (a daemon restarting), and the guest waits until the host is back.
 * That second round runs the guest module on Debian 12's own nodejs 18 (the
 * guest half's oldest Node) when it is cached or apt can fetch it.
 */
const SLOW = 240_000;
const ECHO = path.join(checkoutPath(), 'dist', 'src', 'testbed', 'qemu', 'vport-echo.js');
const MiB = 1 << 20;
let guest: Guest;

beforeAll(async () => {
  guest = await bootGuest({ name: 'channel', rootPorts: 1, modules: ['core'] });
}, SLOW);
afterAll(async () => {
  await guest?.cleanup();
});

/** The echo in the guest, in the background, on the guest's /usr/bin/node; its log is its steps. */
async function startEcho(name: string, log: string): Promise<void> {
  await guest.agent.check(`setsid nohup /usr/bin/node ${ECHO} ${name} > ${log} 2>&1 < /dev/null &`);
}

/** Make the guest's /usr/bin/node Debian 12's node 18; its version, or why not. */
async function switchToNode18(): Promise<{ version: string } | { skipped: string }> {
  if (!cachedDebianNode18() && !(await debianNode18Version().catch(() => undefined))) return { skipped: "apt knows no nodejs 18.x and none is cached" };
  const n18 = await ensureDebianNode18();
  const version = (await guest.agent.check(node18GuestScript(n18, await overlayModules()), { timeoutMs: 60_000 })).trim();
  return { version };
}

async function echoLog(log: string): Promise<string> {
  return guest.agent.check(`cat ${log} 2>/dev/null; true`);
}

async function waitForStep(log: string, step: RegExp, timeoutMs = 60_000): Promise<string> {
  let text = '';
  await expect.poll(async () => (text = await echoLog(log)), { timeout: timeoutMs, interval: 200 }).toMatch(step);
  return text;
}

/** The port names the guest's kernel shows. */
async function guestPortNames(): Promise<string[]> {
  return (await guest.agent.check('cat /sys/class/virtio-ports/*/name 2>/dev/null; true')).split('\n').filter(Boolean);
}

interface Trip {
  /** What came back, once it is all there, and how often the writer was held back. */
  done: Promise<{ back: Buffer; drains: number }>;
  /** Bytes handed to the socket so far. */
  written(): number;
}

/** Write `data` with backpressure (a chunk at a time, waiting for 'drain') while reading the echo. */
function startRoundTrip(socket: net.Socket, data: Buffer): Trip {
  let drains = 0;
  let offset = 0;
  const done = new Promise<{ back: Buffer; drains: number }>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (c: Buffer) => {
      chunks.push(c);
      got += c.length;
      if (got < data.length) return;
      socket.off('data', onData);
      resolve({ back: Buffer.concat(chunks), drains });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('close', () => got < data.length && reject(new Error(`host end closed after ${got} of ${data.length} bytes came back`)));
    const pump = () => {
      while (offset < data.length) {
        const chunk = data.subarray(offset, offset + 64 * 1024);
        offset += chunk.length;
        if (!socket.write(chunk)) {
          drains++;
          return void socket.once('drain', pump);
        }
      }
    };
    pump();
  });
  return { done, written: () => offset - socket.writableLength };
}

function roundTrip(socket: net.Socket, data: Buffer): Promise<{ back: Buffer; drains: number }> {
  return startRoundTrip(socket, data).done;
}

/** A pattern whose every 4 KiB block differs, so a lost, doubled or reordered block shows. */
function pattern(bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE((i * 2654435761) >>> 0, i);
  return b;
}

describe('a hot-plugged virtio-serial byte channel', () => {
  it('4 MiB out and back identical; closing unplugs it; the same id again, the guest waiting while the host end is away', async () => {
    const qmp = guest.qmp;
    const name = 'io.github.xdp_vm.usbip.e2e';
    const socketPath = path.join(guest.workDir, 'usbip-e2e.sock');

    const t0 = Date.now();
    const ch = await openChannel(qmp, { id: 'usbip-e2e', name, socketPath });
    const openMs = Date.now() - t0;
    // The VM has its own virtio-serial controller (the agent's): the port goes there.
    expect(ch).toMatchObject({ bus: 'vser0.0', controllerPort: undefined, deviceId: 'xdpvm-port-usbip-e2e' });
    expect(await listChannels(qmp)).toMatchObject([{ id: 'usbip-e2e', name, bus: 'vser0.0', socketPath, hostConnected: true }]);
    await startEcho(name, '/tmp/echo-1.log');
    expect(await waitForStep('/tmp/echo-1.log', /^OPEN \/dev\/vport0p\d+$/m)).toMatch(/^FOUND \/dev\/vport0p\d+$/m);

    const sent = pattern(4 * MiB);
    const t1 = Date.now();
    const { back, drains } = await roundTrip(ch.socket, sent);
    const echoMs = Date.now() - t1;
    expect(back.length).toBe(sent.length);
    expect(back.equals(sent)).toBe(true);

    // A daemon that stops reading holds the guest back, and never QEMU: the echo's writes wait, so its
    // reads do, so QEMU stops taking the host's bytes and the host's writer is held; meanwhile QEMU's
    // monitor and the guest's agent answer as ever. Reading again, everything arrives intact.
    ch.socket.pause();
    const stalledData = pattern(4 * MiB).reverse();
    const stalled = startRoundTrip(ch.socket, stalledData);
    await new Promise((r) => setTimeout(r, 1500));
    const inFlight = stalled.written();
    expect(inFlight).toBeLessThan(stalledData.length);
    expect(await qmp.execute('query-status')).toMatchObject({ running: true });
    expect((await guest.agent.check('echo alive')).trim()).toBe('alive');
    ch.socket.resume();
    expect((await stalled.done).back.equals(stalledData)).toBe(true);

    const hungUp = new Promise<void>((r) => (ch.socket.destroyed ? r() : ch.socket.once('close', () => r())));
    const t2 = Date.now();
    expect(await closeChannel(qmp, 'usbip-e2e')).toBe(true);
    const closeMs = Date.now() - t2;
    await hungUp;
    // The guest's stream ends with the host's hang-up (EOF) or the unplug (ERROR ENODEV first), whichever it sees first; CLOSED either way.
    expect(await waitForStep('/tmp/echo-1.log', /^CLOSED \d+$/m)).toMatch(/^CLOSED 8388608$/m);
    await expect.poll(guestPortNames, { timeout: 10_000, interval: 200 }).not.toContain(name);
    expect(await listChannels(qmp)).toEqual([]);
    expect(existsSync(socketPath)).toBe(false);
    expect(await closeChannel(qmp, 'usbip-e2e')).toBe(false);
    console.log(
      `[timing] qemu-channel (${guest.accel.accel}): openChannel ${openMs} ms; 4 MiB host → guest → host in ${echoMs} ms ` +
        `(${((4 * 1000) / echoMs).toFixed(1)} MiB/s each way at once; the host writer held back ${drains} times); ` +
        `with the host not reading, the writer was held after ${(inFlight / MiB).toFixed(2)} MiB (socket buffers, QEMU, the guest); closeChannel ${closeMs} ms`,
    );
    console.log(`[channel] round 1, guest on ${await guest.agent.check('/usr/bin/node --version')}`.trim() + `; its end: ${(await echoLog('/tmp/echo-1.log')).trim().split('\n').at(-1)}`);

    const node18 = await switchToNode18();
    if ('skipped' in node18) console.warn(`qemu-channel: the second round runs on the host's node: ${node18.skipped}`);
    else expect(node18.version).toMatch(/^v18\.20\./);

    // Again, same id: nothing was left behind. The host end goes before the guest opens the port.
    const again = await openChannel(qmp, { id: 'usbip-e2e', name, socketPath });
    again.socket.destroy();
    await expect.poll(async () => (await listChannels(qmp))[0]?.hostConnected, { timeout: 5000, interval: 50 }).toBe(false);
    await startEcho(name, '/tmp/echo-2.log');
    await waitForStep('/tmp/echo-2.log', /^FOUND /m);
    await new Promise((r) => setTimeout(r, 1000));
    // Reading EOF all along (no host), the guest has not taken that for the end.
    expect(await echoLog('/tmp/echo-2.log')).not.toMatch(/^(OPEN|CLOSED|ERROR)/m);
    const [listed] = await listChannels(qmp);
    const host: net.Socket = await connectChannel(listed!.socketPath!);
    try {
      await waitForStep('/tmp/echo-2.log', /^OPEN /m);
      const small = randomBytes(256 * 1024);
      expect((await roundTrip(host, small)).back.equals(small)).toBe(true);
    } finally {
      expect(await closeChannel(qmp, 'usbip-e2e')).toBe(true);
      host.destroy();
    }
    await expect.poll(guestPortNames, { timeout: 10_000, interval: 200 }).not.toContain(name);
    expect(await listChannels(qmp)).toEqual([]);
    expect(await guestPortNames()).toEqual(['org.xdpvm.agent']);
    console.log(`[channel] round 2, guest on ${'version' in node18 ? node18.version : 'the host node'}; its steps: ${(await echoLog('/tmp/echo-2.log')).trim().replaceAll('\n', ' | ')}`);
  }, SLOW);

  it("a VM whose virtio-serial bus is full gets a controller of ours on a free root port, and the guest finds the port on it", async () => {
    const qmp = guest.qmp;
    // Fill the agent's controller with ports on null chardevs until QEMU says it has no port number left.
    const fillers: number[] = [];
    let refusal = '';
    for (let i = 0; i < 40 && !refusal; i++) {
      await qmp.execute('chardev-add', { id: `filler-c${i}`, backend: { type: 'null', data: {} } });
      try {
        await qmp.execute('device_add', { driver: 'virtserialport', id: `filler-${i}`, chardev: `filler-c${i}`, name: `filler.${i}`, bus: 'vser0.0' });
        fillers.push(i);
      } catch (err) {
        refusal = (err as Error).message;
        await qmp.execute('chardev-remove', { id: `filler-c${i}` });
      }
    }
    expect(refusal).toMatch(/virtio-serial-bus: (Maximum port number reached|Out-of-range port id specified)/);
    const name = 'io.github.xdp_vm.usbip.own-bus';
    const t0 = Date.now();
    const ch = await openChannel(qmp, { id: 'usbip-own', name, socketPath: path.join(guest.workDir, 'usbip-own.sock') });
    const openMs = Date.now() - t0;
    try {
      expect(ch).toMatchObject({ bus: 'xdpvm-vser.0', controllerPort: guest.rootPorts[0] });
      await startEcho(name, '/tmp/echo-3.log');
      await waitForStep('/tmp/echo-3.log', /^OPEN \/dev\/vport\d+p1$/m);
      const data = randomBytes(256 * 1024);
      expect((await roundTrip(ch.socket, data)).back.equals(data)).toBe(true);
    } finally {
      expect(await closeChannel(qmp, 'usbip-own')).toBe(true);
      ch.socket.destroy();
    }
    await expect.poll(guestPortNames, { timeout: 10_000, interval: 200 }).not.toContain(name);
    console.log(`[timing] qemu-channel (${guest.accel.accel}): openChannel with a controller hot-plugged first ${openMs} ms (${fillers.length} ports filled the VM's own bus)`);
    for (const i of fillers) {
      const gone = qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data.device === `filler-${i}`, { timeoutMs: 10_000 });
      await qmp.execute('device_del', { id: `filler-${i}` });
      await gone;
      await qmp.execute('chardev-remove', { id: `filler-c${i}` });
    }
    expect(await listChannels(qmp)).toEqual([]);
  }, SLOW);
});
