import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder, FrameError, HEADER_BYTES, MAX_FRAME_BYTES } from '../../src/protocol/framing.js';

describe('framing', () => {
  it('round-trips a frame split at every byte boundary', () => {
    const frame = encodeFrame({ t: 'req', id: 1, text: 'héllo' });
    for (let cut = 0; cut <= frame.length; cut++) {
      const d = new FrameDecoder();
      const out = [...d.push(frame.subarray(0, cut)), ...d.push(frame.subarray(cut))];
      expect(out).toEqual([{ t: 'req', id: 1, text: 'héllo' }]);
      expect(d.pending).toBe(0);
    }
  });

  it('decodes several frames delivered in one chunk', () => {
    const d = new FrameDecoder();
    const chunk = Buffer.concat([encodeFrame({ a: 1 }), encodeFrame({ b: 2 }), encodeFrame({ c: 3 }).subarray(0, 5)]);
    expect(d.push(chunk)).toEqual([{ a: 1 }, { b: 2 }]);
    expect(d.pending).toBe(5);
  });

  it('refuses to encode a frame over the cap', () => {
    expect(() => encodeFrame({ s: 'x'.repeat(MAX_FRAME_BYTES) })).toThrow(/exceeds the 1048576-byte cap/);
  });

  it('rejects an oversized frame from its header, before buffering the payload', () => {
    const d = new FrameDecoder(1024);
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32BE(1025);
    expect(() => d.push(header)).toThrow(FrameError);
    expect(() => d.push(Buffer.from('more'))).toThrow(/1025-byte frame; the cap is 1024/);
  });

  it('accepts a frame of exactly the cap', () => {
    const d = new FrameDecoder(64);
    const payload = JSON.stringify('x'.repeat(62));
    expect(Buffer.byteLength(payload)).toBe(64);
    expect(d.push(encodeFrame('x'.repeat(62), 64))).toEqual(['x'.repeat(62)]);
  });

  it('names a non-JSON frame by its size and quotes none of it: the bytes are the peer\'s', () => {
    const payload = Buffer.from('{"\u202e\u001b[2J secret');
    const frame = Buffer.concat([Buffer.alloc(HEADER_BYTES), payload]);
    frame.writeUInt32BE(payload.length);
    let message = '';
    try {
      new FrameDecoder().push(frame);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toBe(`a frame of ${payload.length} bytes is not JSON`);
  });

  it('rejects empty and non-JSON frames', () => {
    expect(() => new FrameDecoder().push(Buffer.alloc(4))).toThrow(/empty frame/);
    const bad = Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('{{{')]);
    expect(() => new FrameDecoder().push(bad)).toThrow(/not JSON/);
  });
});
