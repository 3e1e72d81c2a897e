import type { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Connection } from '../../src/protocol/connection.js';
import { encodeFrame } from '../../src/protocol/framing.js';
import { Welcome } from '../../src/protocol/messages.js';
import { defineMethod, defineNotification, methodTable } from '../../src/protocol/methods.js';
import { memoryPair } from '../../src/transport/memory.js';
import { captureLogger } from '../helpers/log-capture.js';

/**
 * Notifications, capabilities and the version rules. A version-1 peer is
 * played by hand, frame for frame as version 1 defined them, since that is
 * what an old guest or an old host puts on the wire.
 */
const Tick = defineNotification({ name: 'test.tick', direction: 'host-to-guest', params: z.object({ n: z.number().int() }).strict() });
const Tock = defineNotification({ name: 'test.tock', direction: 'guest-to-host', params: z.object({ n: z.number().int() }).strict() });
const Echo = defineMethod({ name: 'test.echo', direction: 'guest-to-host', params: z.object({ text: z.string() }), result: z.object({ text: z.string() }) });
const METHODS = methodTable([Tick, Tock, Echo]);

/** The version-1 Welcome schema, exactly as a v1 guest checks it. */
const WelcomeV1 = z.object({ t: z.literal('welcome'), version: z.number().int().min(0), vm: z.string().max(64) }).strict();

function frames(stream: Duplex): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  let buf = Buffer.alloc(0);
  stream.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      out.push(JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString()) as Record<string, unknown>);
      buf = buf.subarray(4 + buf.readUInt32BE(0));
    }
  });
  return out;
}

const settle = () => new Promise((r) => setTimeout(r, 20));

function pair() {
  const [g, h] = memoryPair();
  const got = { guest: [] as number[], host: [] as number[] };
  const hostLog = captureLogger();
  const host = new Connection({ role: 'host', stream: h, methods: METHODS, log: hostLog.log, notificationHandlers: new Map([[Tock.name, (p) => got.host.push((p as { n: number }).n)]]), handlers: new Map([[Echo.name, async (p) => p]]) });
  const guest = new Connection({ role: 'guest', stream: g, methods: METHODS, log: captureLogger().log, notificationHandlers: new Map([[Tick.name, (p) => got.guest.push((p as { n: number }).n)]]) });
  return { host, guest, got, hostLog, g, h };
}

describe('notifications', () => {
  it('travel both ways, checked on receipt, and never answered', async () => {
    const s = pair();
    const accepted = s.host.acceptGuest('work', undefined, { portals: () => ['FileChooser'] });
    const welcome = await s.guest.helloAsGuest({ name: 't', version: '1' });
    await accepted;
    expect(welcome).toEqual({ vm: 'work', version: 2, portals: ['FileChooser'] });
    expect(s.host.notify(Tick, { n: 1 })).toBe(true);
    expect(s.guest.notify(Tock, { n: 2 })).toBe(true);
    await settle();
    expect(s.got).toEqual({ guest: [1], host: [2] });
    const notifyAnything = s.host.notify.bind(s.host) as (note: unknown, params: unknown) => boolean;
    expect(() => notifyAnything(Tock, { n: 3 })).toThrow(/host may not send test.tock/);
  });

  it('an invalid or unknown notification is dropped with one log line, and the link stays up', async () => {
    const s = pair();
    const accepted = s.host.acceptGuest('work');
    await s.guest.helloAsGuest({ name: 't', version: '1' });
    await accepted;
    for (let i = 0; i < 50; i++) s.g.write(encodeFrame({ t: 'note', method: 'test.tock', params: { n: 'x' } }));
    s.g.write(encodeFrame({ t: 'note', method: 'test.nothing', params: {} }));
    await settle();
    expect(s.got.host).toEqual([]);
    expect(s.hostLog.lines().filter((l) => String(l.msg).includes('dropped an invalid test.tock'))).toHaveLength(1);
    expect(s.hostLog.lines().filter((l) => String(l.msg).includes('does not take'))).toHaveLength(1);
    expect(s.host.isClosed).toBe(false);
    expect(await s.guest.request(Echo, { text: 'still here' })).toEqual({ text: 'still here' });
  });
});

describe('an old guest and a new host', () => {
  it('work together at version 1: the welcome has no key a v1 guest refuses, and no notification is sent', async () => {
    const [g, h] = memoryPair();
    const host = new Connection({ role: 'host', stream: h, methods: METHODS, log: captureLogger().log });
    const seen = frames(g);
    const accepted = host.acceptGuest('work', undefined, { portals: () => ['FileChooser'] });
    g.write(encodeFrame({ t: 'hello', versions: [1, 1], agent: { name: 'xdp-vm-guest', version: '0.1.0' } }));
    await accepted;
    await settle();
    expect(WelcomeV1.safeParse(seen[0]).success).toBe(true);
    expect(seen[0]).toEqual({ t: 'welcome', version: 1, vm: 'work' });
    expect(host.notify(Tick, { n: 1 })).toBe(false);
    await settle();
    expect(seen).toHaveLength(1);
  });

  it('a guest too old for the host fails with a message naming both versions', async () => {
    const [g, h] = memoryPair();
    const host = new Connection({ role: 'host', stream: h, methods: METHODS, log: captureLogger().log });
    const seen = frames(g);
    const accepted = host.acceptGuest('work').catch((e: Error) => e);
    g.write(encodeFrame({ t: 'hello', versions: [0, 0], agent: { name: 'ancient', version: '0' } }));
    expect(String(await accepted)).toMatch(/guest speaks versions 0-0; host speaks 1-2/);
    expect(seen[0]).toMatchObject({ t: 'err', code: 'unsupported-version', message: 'guest speaks versions 0-0; host speaks 1-2' });
  });
});

describe('a new guest and an old host', () => {
  it('work together at version 1: a welcome without portals means the host serves all it has', async () => {
    const [g, h] = memoryPair();
    const guest = new Connection({ role: 'guest', stream: g, methods: METHODS, log: captureLogger().log });
    const seen = frames(h);
    const welcomed = guest.helloAsGuest({ name: 't', version: '1' });
    await settle();
    expect(seen[0]).toMatchObject({ t: 'hello', versions: [1, 2] });
    h.write(encodeFrame({ t: 'welcome', version: 1, vm: 'work' }));
    expect(await welcomed).toEqual({ vm: 'work', version: 1 });
    expect(guest.notify(Tock, { n: 1 })).toBe(false);
    expect(Welcome.safeParse({ t: 'welcome', version: 1, vm: 'work' }).success).toBe(true);
  });

  it('a host that picks a version this guest does not speak is refused, naming both', async () => {
    const [g, h] = memoryPair();
    const guest = new Connection({ role: 'guest', stream: g, methods: METHODS, log: captureLogger().log });
    const seen = frames(h);
    const welcomed = guest.helloAsGuest({ name: 't', version: '1' }).catch((e: Error) => e);
    h.write(encodeFrame({ t: 'welcome', version: 7, vm: 'work' }));
    expect(String(await welcomed)).toMatch(/the host chose protocol version 7; this guest speaks 1-2/);
    await settle();
    expect(seen.at(-1)).toMatchObject({ t: 'err', code: 'unsupported-version' });
    expect(guest.isClosed).toBe(true);
  });

  it('a notification on a version-1 link is a protocol error that closes it', async () => {
    const [g, h] = memoryPair();
    const guest = new Connection({ role: 'guest', stream: g, methods: METHODS, log: captureLogger().log });
    const welcomed = guest.helloAsGuest({ name: 't', version: '1' });
    h.write(encodeFrame({ t: 'welcome', version: 1, vm: 'work' }));
    await welcomed;
    h.write(encodeFrame({ t: 'note', method: 'test.tick', params: { n: 1 } }));
    await settle();
    expect(guest.isClosed).toBe(true);
  });
});
