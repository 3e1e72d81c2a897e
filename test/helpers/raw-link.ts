import net from 'node:net';
import { encodeFrame } from '../../src/protocol/framing.js';

/** A hand-driven guest link, for sending the host what a hostile guest would. */
export class RawLink {
  readonly frames: Record<string, unknown>[] = [];
  closed = false;
  private buf = Buffer.alloc(0);

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      while (this.buf.length >= 4 && this.buf.length >= 4 + this.buf.readUInt32BE(0)) {
        const n = this.buf.readUInt32BE(0);
        this.frames.push(JSON.parse(this.buf.subarray(4, 4 + n).toString('utf8')) as Record<string, unknown>);
        this.buf = this.buf.subarray(4 + n);
      }
    });
    socket.on('close', () => (this.closed = true));
    socket.on('error', () => undefined);
  }

  static connect(path: string): Promise<RawLink> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(new RawLink(s)));
      s.once('error', reject);
    });
  }

  send(message: unknown): void {
    this.socket.write(encodeFrame(message));
  }

  sendBytes(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  hello(): void {
    this.send({ t: 'hello', versions: [1, 1], agent: { name: 'raw', version: '0' } });
  }

  destroy(): void {
    this.socket.destroy();
  }
}
