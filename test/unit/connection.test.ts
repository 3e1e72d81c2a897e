import { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Connection, type AnyHandler, type ConnectionOptions } from '../../src/protocol/connection.js';
import { encodeFrame } from '../../src/protocol/framing.js';
import { LogLimiter } from '../../src/protocol/log-limiter.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import { defineMethod, methodTable } from '../../src/protocol/methods.js';
import { memoryPair } from '../../src/transport/memory.js';
import { captureLogger } from '../helpers/log-capture.js';

const Echo = defineMethod({ name: 'test.echo', direction: 'guest-to-host', params: z.object({ text: z.string().max(10) }), result: z.object({ text: z.string() }) });
const Wait = defineMethod({ name: 'test.wait', direction: 'guest-to-host', params: z.object({}), result: z.object({ done: z.boolean() }) });
const Lie = defineMethod({ name: 'test.lie', direction: 'guest-to-host', params: z.object({}), result: z.object({ n: z.number() }) });
const Unmount = defineMethod({ name: 'test.unmount', direction: 'host-to-guest', params: z.object({}), result: z.object({ ok: z.boolean() }) });
const Big = defineMethod({ name: 'test.big', direction: 'guest-to-host', params: z.object({}), result: z.object({ blob: z.string() }) });
const Fail = defineMethod({ name: 'test.fail', direction: 'guest-to-host', params: z.object({}), result: z.object({}) });
const Strict = defineMethod({ name: 'test.strict', direction: 'guest-to-host', params: z.object({ options: z.record(z.string().max(8), z.number()) }).strict(), result: z.object({}) });
const METHODS = methodTable([Echo, Wait, Lie, Unmount, Big, Fail, Strict]);

function setup(hostHandlers: Record<string, AnyHandler> = {}, guestHandlers: Record<string, AnyHandler> = {}, maxInFlight?: number, extra: Partial<ConnectionOptions> = {}) {
  const [g, h] = memoryPair();
  const hostLog = captureLogger();
  const host = new Connection({ role: 'host', stream: h, methods: METHODS, handlers: new Map(Object.entries(hostHandlers)), log: hostLog.log, maxInFlight, ...extra });
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
    expect(await connected(s)).toEqual({ vm: 'work', version: 2 });
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

/**
 * A link to a guest that does not read: nothing written is taken until the
 * test says so. What the host wrote is kept, decoded, in `frames`.
 */
function unreadLink() {
  const held: (() => void)[] = [];
  const frames: Record<string, unknown>[] = [];
  let buf = Buffer.alloc(0);
  const stream = new Duplex({
    read() {},
    writableHighWaterMark: 1024,
    write(chunk: Buffer, _enc, cb) {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        frames.push(JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString()) as Record<string, unknown>);
        buf = buf.subarray(4 + buf.readUInt32BE(0));
      }
      held.push(cb);
    },
  });
  /** The guest reads everything written so far, and what that lets through, until nothing is left. */
  const readAll = async () => {
    while (held.length) {
      while (held.length) held.shift()!();
      await tick();
    }
  };
  /** The guest reads one write's worth. */
  const readOne = () => held.shift()?.();
  const send = (frame: unknown) => stream.push(encodeFrame(frame));
  return { stream, frames, readAll, readOne, send };
}

const HELLO = { t: 'hello', versions: [1, 1], agent: { name: 'raw', version: '0' } };

describe('a guest that does not read its replies', () => {
  it('is not read from either while its replies are backed up, and is answered in full once it reads', async () => {
    const link = unreadLink();
    const hostLog = captureLogger();
    const host = new Connection({ role: 'host', stream: link.stream, methods: METHODS, handlers: new Map(), log: hostLog.log });
    void host.acceptGuest('work');
    link.send(HELLO);
    for (let id = 1; id <= 500; id++) link.send({ t: 'req', id, method: 'test.nothing', params: {} });
    await tick();
    // Each request costs an err frame: a host that kept reading would hold all 500 answers in memory.
    expect(link.stream.readableLength).toBeGreaterThan(0);
    expect(link.stream.writableLength).toBeLessThan(4096);
    expect(host.isClosed).toBe(false);
    await link.readAll();
    expect(link.frames.filter((f) => f.t === 'err')).toHaveLength(500);
    expect(host.isClosed).toBe(false);
  });

  it('loses its link once results it asked for pile up past the cap, with one log line', async () => {
    const link = unreadLink();
    const hostLog = captureLogger();
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const handlers = new Map<string, AnyHandler>([['test.big', async () => (await released, { blob: 'x'.repeat(2000) })]]);
    const host = new Connection({ role: 'host', stream: link.stream, methods: METHODS, handlers, log: hostLog.log, maxQueuedBytes: 8192 });
    void host.acceptGuest('work');
    link.send(HELLO);
    for (let id = 1; id <= 10; id++) link.send({ t: 'req', id, method: 'test.big', params: {} });
    await tick();
    expect(host.isClosed).toBe(false);
    release();
    await tick();
    expect(host.isClosed).toBe(true);
    expect(link.stream.destroyed).toBe(true);
    const lines = hostLog.lines().filter((l) => String(l.msg).includes('closing link'));
    expect(lines).toHaveLength(1);
    expect(lines[0]!.msg).toMatch(/not reading its replies/);
  });

  it('still gets the error frame that ends its link after a refused frame, though it was slow to read', async () => {
    const link = unreadLink();
    const host = new Connection({ role: 'host', stream: link.stream, methods: METHODS, handlers: new Map(), log: captureLogger().log });
    void host.acceptGuest('work');
    link.send(HELLO);
    for (let id = 1; id <= 20; id++) link.send({ t: 'req', id, method: 'test.nothing', params: {} });
    await tick();
    // A frame header claiming 2 GiB: the host refuses it and closes, its answers still queued.
    link.stream.push(Buffer.from([0x7f, 0xff, 0xff, 0xff]));
    // The guest reads one write at a time, slowly: the host reads again, refuses the frame and closes meanwhile.
    for (let i = 0; i < 200 && !link.stream.destroyed && (!host.isClosed || link.stream.writableLength > 0); i++) {
      link.readOne();
      await tick();
    }
    expect(host.isClosed).toBe(true);
    await link.readAll();
    expect(link.frames.at(-1)).toMatchObject({ t: 'err', id: null, code: 'too-large' });
    expect(link.frames.filter((f) => f.t === 'err' && f.id !== null)).toHaveLength(20);
    await expect.poll(() => link.stream.destroyed, { timeout: 3000 }).toBe(true);
  });

  it('loses its link when its replies have not moved for the stall time', async () => {
    const link = unreadLink();
    const host = new Connection({ role: 'host', stream: link.stream, methods: METHODS, handlers: new Map(), log: captureLogger().log, stallMs: 100 });
    const closed = new Promise<string>((r) => host.once('close', r));
    void host.acceptGuest('work').catch(() => undefined);
    link.send(HELLO);
    for (let id = 1; id <= 50; id++) link.send({ t: 'req', id, method: 'test.nothing', params: {} });
    expect(await closed).toMatch(/not reading/);
  });

  it('keeps a link that reads slowly but steadily', async () => {
    const link = unreadLink();
    const host = new Connection({ role: 'host', stream: link.stream, methods: METHODS, handlers: new Map(), log: captureLogger().log, stallMs: 200 });
    void host.acceptGuest('work');
    link.send(HELLO);
    for (let id = 1; id <= 300; id++) link.send({ t: 'req', id, method: 'test.nothing', params: {} });
    // One write every 50 ms, each stall time (200 ms) over: slow, but never stopped.
    for (let i = 0; i < 12; i++) {
      await new Promise((r) => setTimeout(r, 50));
      link.readOne();
    }
    expect(host.isClosed).toBe(false);
    await link.readAll();
    expect(host.isClosed).toBe(false);
    expect(link.frames.filter((f) => f.t === 'err')).toHaveLength(300);
  });
});

const BIDI = '\u202e';
const ESC = '\u001b';
/** Every string value in a log line, nested or not. */
function stringsOf(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(stringsOf);
  if (value && typeof value === 'object') return Object.entries(value).flatMap(([k, v]) => [k, ...stringsOf(v)]);
  return [];
}
function expectClean(lines: Record<string, unknown>[]) {
  for (const line of lines) {
    const text = stringsOf(line).join(' ');
    expect(text).not.toContain(BIDI);
    expect(text).not.toContain(ESC);
    expect(JSON.stringify(line).length).toBeLessThan(2000);
    expect(line).not.toHaveProperty('stack');
    expect(JSON.stringify(line)).not.toContain('"stack"');
  }
}

describe('what a guest can make the host log', () => {
  it('a flood of answers to requests that do not exist is one line, then one count when the burst ends', async () => {
    const logLimiter = new LogLimiter({ quietMs: 100 });
    const s = setup({}, {}, undefined, { logLimiter });
    await connected(s);
    for (let id = 1; id <= 1000; id++) s.guestStream.write(encodeFrame({ t: 'res', id: 5000 + id, result: {} }));
    await tick();
    const about = () => s.hostLog.lines().filter((l) => String(l.msg).includes('peer answered a request that does not exist'));
    expect(about()).toHaveLength(1);
    await expect.poll(() => about().length, { timeout: 2000 }).toBe(2);
    expect(about()[1]).toMatchObject({ more: 999 });
    expect(about()[1]!.msg).toMatch(/^…999 more like this/);
    expect(s.host.isClosed).toBe(false);
  });

  it('links of one VM share their bursts, so reconnecting does not start a new one', async () => {
    const logLimiter = new LogLimiter({ quietMs: 60_000 });
    const out = captureLogger();
    for (let i = 0; i < 3; i++) {
      const [g, h] = memoryPair();
      const host = new Connection({ role: 'host', stream: h, methods: METHODS, log: out.log.child({ vm: 'work' }), logLimiter });
      void host.acceptGuest('work').catch(() => undefined);
      g.write(encodeFrame(HELLO));
      g.write(encodeFrame({ t: 'bogus' }));
      await tick();
      expect(host.isClosed).toBe(true);
    }
    expect(out.lines().filter((l) => String(l.msg).includes('closing link'))).toHaveLength(1);
    logLimiter.flush();
    expect(out.lines().filter((l) => String(l.msg).includes('…2 more like this'))).toHaveLength(1);
  });

  it('guest text in a malformed frame reaches the log and the err frame escaped and capped', async () => {
    const s = setup();
    await connected(s);
    const frames = framesFrom(s.guestStream);
    const key = `${BIDI}${ESC}[2J${'k'.repeat(20_000)}`;
    s.guestStream.write(encodeFrame({ t: 'req', id: 1, method: 'test.echo', params: {}, [key]: 1, [`${key}2`]: 2 }));
    await tick();
    expect(s.host.isClosed).toBe(true);
    const [err] = frames as { message: string }[];
    expect(err).toMatchObject({ t: 'err', code: 'bad-frame' });
    expect(err!.message).toContain('\\u{202e}\\x1b[2J');
    expect(err!.message.length).toBeLessThanOrEqual(1024);
    const closing = s.hostLog.lines().filter((l) => String(l.msg).includes('closing link'));
    expect(closing).toHaveLength(1);
    expectClean(s.hostLog.lines());
  });

  it('invalid params naming guest keys come back escaped and capped, and the link stays', async () => {
    const s = setup({ 'test.strict': async () => ({}) });
    await connected(s);
    const frames = framesFrom(s.guestStream);
    const key = `${BIDI}${ESC}[2J${'k'.repeat(5000)}`;
    s.guestStream.write(encodeFrame({ t: 'req', id: 3, method: 'test.strict', params: { options: {}, [key]: 1, b: 2, c: 3, d: 4, e: 5 } }));
    s.guestStream.write(encodeFrame({ t: 'req', id: 4, method: 'test.strict', params: { options: { [key]: 1 } } }));
    await tick();
    expect(frames).toEqual([expect.objectContaining({ id: 3, code: 'invalid-params' }), expect.objectContaining({ id: 4, code: 'invalid-params' })]);
    const [unknownKeys, badRecordKey] = frames as { message: string }[];
    expect(unknownKeys!.message).toMatch(/^test\.strict: \(root\): unrecognized keys "\\u\{202e\}\\x1b\[2Jk+…", "b", "c" and 2 more$/);
    expect(badRecordKey!.message).toMatch(/^test\.strict: options\.\\u\{202e\}\\x1b\[2Jk+…: /);
    for (const f of frames as { message: string }[]) expect(f.message.length).toBeLessThan(300);
    expect(JSON.stringify(frames)).not.toMatch(/\u202e|\\u001b/);
    expect(s.host.isClosed).toBe(false);
  });

  it("a peer's link error is logged escaped, under a key that says the peer said it", async () => {
    const s = setup();
    await connected(s);
    s.guestStream.write(encodeFrame({ t: 'err', id: null, code: 'failed', message: `${BIDI}${ESC}]0;owned${'x'.repeat(1000)}` }));
    await tick();
    expect(s.host.isClosed).toBe(true);
    const [line] = s.hostLog.lines().filter((l) => l.msg === 'peer reported a link error');
    expect(String(line!.peerSaid)).toMatch(/^\\u\{202e\}\\x1b\]0;owned/);
    expectClean(s.hostLog.lines());
  });

  it("a handler's failure is logged without a stack, its message escaped, and the guest hears only that it failed", async () => {
    class PortalError extends Error {
      override name = 'PortalError';
    }
    const s = setup({ 'test.fail': async () => Promise.reject(new PortalError(`invalid options: ${BIDI}evil${ESC}[31m`)) });
    await connected(s);
    for (let i = 0; i < 20; i++) await expect(s.guest.request(Fail, {})).rejects.toMatchObject({ code: 'failed', message: 'test.fail failed' });
    const lines = s.hostLog.lines().filter((l) => String(l.msg).includes('handler failed'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ error: 'PortalError', detail: 'invalid options: \\u{202e}evil\\x1b[31m' });
    expectClean(s.hostLog.lines());
  });

  it('a handler that hits a bug of ours logs where, not a stack trace', async () => {
    const s = setup({ 'test.fail': async () => (undefined as unknown as { oops: () => object }).oops() });
    await connected(s);
    await expect(s.guest.request(Fail, {})).rejects.toMatchObject({ code: 'failed', message: 'test.fail failed' });
    const [line] = s.hostLog.lines().filter((l) => String(l.msg).includes('handler failed'));
    expect(line).toMatchObject({ error: 'TypeError', at: expect.stringMatching(/^at .*connection\.test\.ts:\d+/) });
    expectClean(s.hostLog.lines());
  });

  it("the guest's agent is cleaned before anyone logs it", async () => {
    const { host, guestStream, hostLog } = setup();
    const accepted = host.acceptGuest('work');
    guestStream.write(encodeFrame({ t: 'hello', versions: [1, 1], agent: { name: `x${BIDI}${ESC}[8m`, version: `1${ESC}` } }));
    expect((await accepted).agent).toEqual({ name: 'x\\u{202e}\\x1b[8m', version: '1\\x1b' });
    guestStream.write(encodeFrame({ t: 'hello', versions: [1, 1], agent: { name: `y${BIDI}`, version: '2' } }));
    await tick();
    expect(hostLog.lines().some((l) => String(l.msg).includes('said hello again'))).toBe(true);
    expectClean(hostLog.lines());
  });

  it('an error message full of astral characters still fits the err frame the guest must accept', async () => {
    // A handler's ProtocolError may quote guest text; a code point outside the BMP is two of zod's units.
    const s = setup({ 'test.fail': async () => Promise.reject(new ProtocolError('denied', `not allowed: ${'\u{1f600}'.repeat(900)}`)) });
    await connected(s);
    const failure = await s.guest.request(Fail, {}).catch((e: ProtocolError) => e);
    expect(failure).toMatchObject({ code: 'denied', message: expect.stringMatching(/^not allowed: \u{1f600}+…$/u) });
    expect(failure.message.length).toBeLessThanOrEqual(1024);
    // The guest's side checked the err frame against its schema and kept its link.
    expect(s.guest.isClosed).toBe(false);
  });

  it('a frame that is not JSON is reported without quoting it', async () => {
    const s = setup();
    await connected(s);
    const frames = framesFrom(s.guestStream);
    const payload = Buffer.from(`{${BIDI}${ESC}[2J`);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(payload.length);
    s.guestStream.write(Buffer.concat([header, payload]));
    await tick();
    expect(frames).toEqual([expect.objectContaining({ code: 'bad-frame', message: `a frame of ${payload.length} bytes is not JSON` })]);
    expectClean(s.hostLog.lines());
  });
});
