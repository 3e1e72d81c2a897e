import type { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Connection, type AnyHandler } from '../../src/protocol/connection.js';
import { encodeFrame } from '../../src/protocol/framing.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import { defineMethod, methodTable } from '../../src/protocol/methods.js';
import { memoryPair } from '../../src/transport/memory.js';
import { captureLogger } from '../helpers/log-capture.js';

const Echo = defineMethod({ name: 'test.echo', direction: 'guest-to-host', params: z.object({ text: z.string().max(10) }), result: z.object({ text: z.string() }) });
const Wait = defineMethod({ name: 'test.wait', direction: 'guest-to-host', params: z.object({}), result: z.object({ done: z.boolean() }) });
const Lie = defineMethod({ name: 'test.lie', direction: 'guest-to-host', params: z.object({}), result: z.object({ n: z.number() }) });
const Unmount = defineMethod({ name: 'test.unmount', direction: 'host-to-guest', params: z.object({}), result: z.object({ ok: z.boolean() }) });
const METHODS = methodTable([Echo, Wait, Lie, Unmount]);

function setup(hostHandlers: Record<string, AnyHandler> = {}, guestHandlers: Record<string, AnyHandler> = {}, maxInFlight?: number) {
  const [g, h] = memoryPair();
  const hostLog = captureLogger();
  const host = new Connection({ role: 'host', stream: h, methods: METHODS, handlers: new Map(Object.entries(hostHandlers)), log: hostLog.log, maxInFlight });
  const guest = new Connection({ role: 'guest', stream: g, methods: METHODS, handlers: new Map(Object.entries(guestHandlers)), log: captureLogger().log });
  return { host, guest, hostLog, guestStream: g, hostStream: h };
}

async function connected(s: ReturnType<typeof setup>) {
  const accepted = s.host.acceptGuest('work');
  const welcome = await s.guest.helloAsGuest({ name: 'test', version: '1' });
  await accepted;
  return welcome;
}

/** Everything the host writes back, decoded. */
function framesFrom(stream: Duplex): unknown[] {
  const frames: unknown[] = [];
  let buf = Buffer.alloc(0);
  stream.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      frames.push(JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString()));
      buf = buf.subarray(4 + buf.readUInt32BE(0));
    }
  });
  return frames;
}

const tick = () => new Promise((r) => setTimeout(r, 20));

describe('connection', () => {
  it('handshakes and names the VM from the host side', async () => {
    const s = setup();
    expect(await connected(s)).toEqual({ vm: 'work', version: 1 });
  });

  it('refuses a guest that speaks no common version', async () => {
    const { host, hostStream, guestStream } = setup();
    const frames = framesFrom(guestStream);
    void host.acceptGuest('work').catch(() => undefined);
    guestStream.write(encodeFrame({ t: 'hello', versions: [7, 9], agent: { name: 'x', version: '1' } }));
    await tick();
    expect(frames).toEqual([expect.objectContaining({ t: 'err', id: null, code: 'unsupported-version' })]);
    expect(host.isClosed).toBe(true);
    expect(hostStream.destroyed).toBe(true);
  });

  it('routes requests and results by id, concurrently', async () => {
    const s = setup({ 'test.echo': async (p) => ({ text: (p as { text: string }).text.toUpperCase() }) });
    await connected(s);
    const results = await Promise.all(['a', 'b', 'c'].map((text) => s.guest.request(Echo, { text })));
    expect(results).toEqual([{ text: 'A' }, { text: 'B' }, { text: 'C' }]);
  });

  it('answers invalid params with a typed error and keeps the link', async () => {
    const s = setup({ 'test.echo': async (p) => p });
    await connected(s);
    const frames = framesFrom(s.guestStream);
    s.guestStream.write(encodeFrame({ t: 'req', id: 99, method: 'test.echo', params: { text: 'far too long text' } }));
    await tick();
    expect(frames).toEqual([expect.objectContaining({ t: 'err', id: 99, code: 'invalid-params' })]);
    expect(await s.guest.request(Echo, { text: 'ok' })).toEqual({ text: 'ok' });
  });

  it('answers an unknown method, or one called in the wrong direction, with unknown-method', async () => {
    const s = setup({}, { 'test.unmount': async () => ({ ok: true }) });
    await connected(s);
    const frames = framesFrom(s.guestStream);
    s.guestStream.write(encodeFrame({ t: 'req', id: 5, method: 'test.nothing', params: {} }));
    s.guestStream.write(encodeFrame({ t: 'req', id: 6, method: 'test.unmount', params: {} }));
    await tick();
    expect(frames).toEqual([expect.objectContaining({ id: 5, code: 'unknown-method' }), expect.objectContaining({ id: 6, code: 'unknown-method' })]);
    expect(s.host.isClosed).toBe(false);
  });

  it('rejects a result that fails its schema on the receiving side', async () => {
    const s = setup({ 'test.lie': async () => ({ n: 'not a number' }) });
    await connected(s);
    await expect(s.guest.request(Lie, {})).rejects.toMatchObject({ code: 'failed' });
  });

  it('cancels from the caller: the handler sees the abort and the caller gets cancelled', async () => {
    let aborted = false;
    const s = setup({
      'test.wait': (_p, ctx) =>
        new Promise((resolve) => ctx.signal.addEventListener('abort', () => ((aborted = true), resolve({ done: false })))),
    });
    await connected(s);
    const ac = new AbortController();
    const pending = s.guest.request(Wait, {}, { signal: ac.signal });
    await tick();
    ac.abort();
    await expect(pending).rejects.toMatchObject({ code: 'cancelled' });
    await tick();
    expect(aborted).toBe(true);
    expect(s.hostLog.lines().filter((l) => l.level === 40)).toEqual([]);
  });

  it('cancels in the other direction too: host to guest', async () => {
    let aborted = false;
    const s = setup({}, { 'test.unmount': (_p, ctx) => new Promise((resolve) => ctx.signal.addEventListener('abort', () => ((aborted = true), resolve({ ok: false })))) });
    await connected(s);
    const ac = new AbortController();
    const pending = s.host.request(Unmount, {}, { signal: ac.signal });
    await tick();
    ac.abort();
    await expect(pending).rejects.toMatchObject({ code: 'cancelled' });
    await tick();
    expect(aborted).toBe(true);
  });

  it('closes the link on a malformed frame, with one error frame and one log line', async () => {
    const s = setup();
    await connected(s);
    const frames = framesFrom(s.guestStream);
    s.guestStream.write(encodeFrame({ t: 'bogus', id: 1 }));
    await tick();
    expect(frames).toEqual([expect.objectContaining({ t: 'err', id: null, code: 'bad-frame' })]);
    expect(s.host.isClosed).toBe(true);
    expect(s.hostLog.lines().filter((l) => String(l.msg).includes('closing link'))).toHaveLength(1);
  });

  it('closes the link when a frame header announces more than the cap', async () => {
    const s = setup();
    await connected(s);
    const frames = framesFrom(s.guestStream);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(64 * 1024 * 1024);
    s.guestStream.write(header);
    await tick();
    expect(frames).toEqual([expect.objectContaining({ code: 'too-large' })]);
    expect(s.host.isClosed).toBe(true);
  });

  it('refuses requests before the handshake', async () => {
    const s = setup({ 'test.echo': async (p) => p });
    void s.host.acceptGuest('work');
    const frames = framesFrom(s.guestStream);
    s.guestStream.write(encodeFrame({ t: 'req', id: 1, method: 'test.echo', params: { text: 'x' } }));
    await tick();
    expect(frames).toEqual([expect.objectContaining({ id: 1, code: 'not-ready' })]);
  });

  it('answers busy beyond the in-flight limit', async () => {
    const s = setup({ 'test.wait': () => new Promise(() => undefined) }, {}, 2);
    await connected(s);
    const frames = framesFrom(s.guestStream);
    for (const id of [1, 2, 3]) s.guestStream.write(encodeFrame({ t: 'req', id, method: 'test.wait', params: {} }));
    await tick();
    expect(frames).toEqual([expect.objectContaining({ id: 3, code: 'busy' })]);
  });

  it('rejects pending requests when the link drops', async () => {
    const s = setup({ 'test.wait': () => new Promise(() => undefined) });
    await connected(s);
    const pending = s.guest.request(Wait, {});
    await tick();
    s.hostStream.destroy();
    await expect(pending).rejects.toBeInstanceOf(ProtocolError);
  });

  it('resets the session when the guest says hello again (its backend restarted)', async () => {
    let aborted = false;
    const s = setup({ 'test.wait': (_p, ctx) => new Promise((resolve) => ctx.signal.addEventListener('abort', () => ((aborted = true), resolve({ done: false })))) });
    await connected(s);
    void s.guest.request(Wait, {}).catch(() => undefined);
    await tick();
    const again = await s.guest.helloAsGuest({ name: 'test', version: '2' });
    expect(again.vm).toBe('work');
    expect(aborted).toBe(true);
  });
});
