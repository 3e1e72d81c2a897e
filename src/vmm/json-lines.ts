import type { Socket } from 'node:net';

/**
 * The generic protocol layer under QMP: newline-delimited JSON over a stream socket.
 * It knows nothing about QMP; it turns bytes into parsed values and back, and it
 * refuses to buffer without bound, so a confused or hostile peer cannot make us
 * allocate memory until the daemon dies.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024;

export class ReadCapExceededError extends Error {
  constructor(
    readonly limitBytes: number,
    readonly bufferedBytes: number,
  ) {
    super(
      `peer sent ${bufferedBytes} bytes without a newline; one message may be at most ${limitBytes} bytes, so the connection was dropped`,
    );
    this.name = 'ReadCapExceededError';
  }
}

export class MalformedMessageError extends Error {
  constructor(
    readonly excerpt: string,
    options?: { cause?: unknown },
  ) {
    super(`peer sent a line that is not JSON: ${JSON.stringify(excerpt)}`, options);
    this.name = 'MalformedMessageError';
  }
}

export interface JsonLineHandlers {
  onMessage(value: unknown): void;
  /** Called exactly once; `error` is undefined for an orderly close by either side. */
  onClose(error: Error | undefined): void;
}

/** One message as it goes on the wire: its JSON, then a newline. */
export function jsonLine(value: unknown): Buffer {
  return Buffer.from(`${JSON.stringify(value)}\n`);
}

export class JsonLineStream {
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private finished = false;

  constructor(
    private readonly socket: Socket,
    private readonly handlers: JsonLineHandlers,
    private readonly maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.finish(err));
    socket.on('close', () => this.finish(undefined));
  }

  get closed(): boolean {
    return this.finished;
  }

  send(value: unknown): void {
    if (this.finished) throw new Error('cannot send: the connection is closed');
    this.socket.write(jsonLine(value));
  }

  /** Drop the connection; `error` is what the close handler reports. */
  close(error?: Error): void {
    this.finish(error);
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    while (!this.finished) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      const piece = chunk.subarray(start, nl);
      start = nl + 1;
      const size = this.bufferedBytes + piece.length;
      const line = this.bufferedBytes > 0 ? Buffer.concat([...this.chunks, piece], size) : piece;
      this.chunks = [];
      this.bufferedBytes = 0;
      if (size > this.maxMessageBytes) return this.close(new ReadCapExceededError(this.maxMessageBytes, size));
      this.deliver(line);
    }
    if (this.finished || start >= chunk.length) return;
    // Copy: the rest may be a small slice of a large chunk we would otherwise pin.
    const rest = Buffer.from(chunk.subarray(start));
    this.chunks.push(rest);
    this.bufferedBytes += rest.length;
    if (this.bufferedBytes > this.maxMessageBytes) {
      this.close(new ReadCapExceededError(this.maxMessageBytes, this.bufferedBytes));
    }
  }

  private deliver(line: Buffer): void {
    const text = line.toString('utf8').trim();
    if (text === '') return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (cause) {
      return this.close(new MalformedMessageError(text.slice(0, 200), { cause }));
    }
    this.handlers.onMessage(value);
  }

  private finish(error: Error | undefined): void {
    if (this.finished) return;
    this.finished = true;
    this.chunks = [];
    this.bufferedBytes = 0;
    this.handlers.onClose(error);
  }
}
