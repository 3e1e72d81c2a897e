/**
 * Layer 1 of the guest↔host protocol: length-prefixed frames.
 *
 * A frame is a 4-byte big-endian payload length followed by that many bytes of
 * UTF-8 JSON. The cap is checked on the header, before any payload is buffered,
 * so a hostile peer cannot make us allocate more than MAX_FRAME_BYTES.
 */
export const HEADER_BYTES = 4;
export const MAX_FRAME_BYTES = 1024 * 1024;

export class FrameError extends Error {
  constructor(
    readonly code: 'too-large' | 'empty' | 'not-json',
    message: string,
  ) {
    super(message);
    this.name = 'FrameError';
  }
}

export function encodeFrame(message: unknown, maxBytes = MAX_FRAME_BYTES): Buffer {
  const json = JSON.stringify(message);
  const length = Buffer.byteLength(json, 'utf8');
  if (length > maxBytes) {
    throw new FrameError('too-large', `frame of ${length} bytes exceeds the ${maxBytes}-byte cap`);
  }
  const frame = Buffer.allocUnsafe(HEADER_BYTES + length);
  frame.writeUInt32BE(length, 0);
  frame.write(json, HEADER_BYTES, 'utf8');
  return frame;
}

/**
 * Incremental decoder. `push` returns every complete payload parsed as JSON;
 * after a FrameError the stream is out of sync and the decoder refuses more input.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private broken: FrameError | undefined;

  constructor(private readonly maxBytes = MAX_FRAME_BYTES) {}

  push(chunk: Buffer): unknown[] {
    if (this.broken) throw this.broken;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: unknown[] = [];
    for (;;) {
      if (this.buffered < HEADER_BYTES) break;
      const length = this.peekLength();
      if (length > this.maxBytes) {
        throw (this.broken = new FrameError('too-large', `peer announced a ${length}-byte frame; the cap is ${this.maxBytes} bytes`));
      }
      if (length === 0) throw (this.broken = new FrameError('empty', 'peer sent an empty frame'));
      if (this.buffered < HEADER_BYTES + length) break;
      const payload = this.take(HEADER_BYTES + length).subarray(HEADER_BYTES);
      try {
        out.push(JSON.parse(payload.toString('utf8')));
      } catch {
        // V8's message quotes the payload, and the payload is the peer's: name only its size.
        throw (this.broken = new FrameError('not-json', `a frame of ${length} bytes is not JSON`));
      }
    }
    return out;
  }

  /** Bytes received but not yet part of a complete frame. */
  get pending(): number {
    return this.buffered;
  }

  private peekLength(): number {
    const head = this.chunks[0]!.length >= HEADER_BYTES ? this.chunks[0]! : this.take(HEADER_BYTES, false);
    return head.readUInt32BE(0);
  }

  private take(n: number, consume = true): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const taken = all.subarray(0, n);
    if (consume) {
      const rest = all.subarray(n);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
    } else {
      this.chunks = [all];
    }
    return taken;
  }
}
