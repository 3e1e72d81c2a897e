import net from 'node:net';

/**
 * A guest link driven by a fuzzer: it writes whatever bytes it is given,
 * reads the host's frames without keeping them (a run sees hundreds of
 * thousands), and lets the caller wait for the answer to one request id,
 * for the welcome, or for the host to close the link.
 */
export interface HostFrame {
  t: string;
  id?: number | null;
  code?: string;
  message?: string;
  [key: string]: unknown;
}

export type WaitResult = 'answered' | 'closed' | 'timeout';

export class FuzzLink {
  closed = false;
  welcomed = false;
  /** The host's link-level error (`err` with id null), if it sent one. */
  linkError: HostFrame | undefined;
  framesIn = 0;
  /** Ids the host has answered (res or err). */
  readonly answered = new Set<number>();
  /** Frames the host sent that did not parse: the host must always speak the protocol. */
  garbledIn = 0;
  private buf: Buffer = Buffer.alloc(0);
  private readonly waiters = new Map<number, (f: HostFrame) => void>();
  private onWelcome: (() => void) | undefined;
  private readonly onClose: (() => void)[] = [];

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => this.receive(c));
    socket.on('close', () => {
      this.closed = true;
      for (const cb of this.onClose.splice(0)) cb();
    });
    socket.on('error', () => undefined);
  }

  static connect(path: string): Promise<FuzzLink> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(new FuzzLink(s)));
      s.once('error', reject);
    });
  }

  write(bytes: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** Write `bytes` in pieces, so frames and headers arrive split across reads. */
  writeInPieces(bytes: Buffer, cut: (remaining: number) => number): void {
    this.socket.cork();
    for (let at = 0; at < bytes.length; ) {
      const n = Math.max(1, Math.min(bytes.length - at, cut(bytes.length - at)));
      this.write(bytes.subarray(at, at + n));
      at += n;
    }
    process.nextTick(() => this.socket.uncork());
  }

  welcome(timeoutMs: number): Promise<WaitResult> {
    if (this.welcomed) return Promise.resolve('answered');
    return this.race(timeoutMs, (done) => (this.onWelcome = () => done('answered')));
  }

  /** Wait until the host answers request `id` (res or err), closes the link, or `timeoutMs` pass. */
  answer(id: number, timeoutMs: number): Promise<WaitResult> {
    if (this.answered.has(id)) return Promise.resolve('answered');
    return this.race(timeoutMs, (done) => this.waiters.set(id, () => done('answered')));
  }

  /** Wait for the host to close the link. */
  closedWithin(timeoutMs: number): Promise<WaitResult> {
    return this.race(timeoutMs, () => undefined);
  }

  destroy(): void {
    this.socket.destroy();
  }

  private race(timeoutMs: number, arm: (done: (r: WaitResult) => void) => void): Promise<WaitResult> {
    if (this.closed) return Promise.resolve('closed');
    return new Promise((resolve) => {
      let settled = false;
      const done = (r: WaitResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(r);
      };
      const timer = setTimeout(() => done('timeout'), timeoutMs);
      this.onClose.push(() => done('closed'));
      arm(done);
    });
  }

  private receive(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    let at = 0;
    while (this.buf.length - at >= 4) {
      const n = this.buf.readUInt32BE(at);
      if (this.buf.length - at - 4 < n) break;
      const payload = this.buf.subarray(at + 4, at + 4 + n);
      at += 4 + n;
      this.framesIn++;
      let f: HostFrame;
      try {
        f = JSON.parse(payload.toString('utf8')) as HostFrame;
      } catch {
        this.garbledIn++;
        continue;
      }
      this.handle(f);
    }
    this.buf = at === this.buf.length ? Buffer.alloc(0) : this.buf.subarray(at);
  }

  private handle(f: HostFrame): void {
    if (f.t === 'welcome') {
      this.welcomed = true;
      this.onWelcome?.();
      this.onWelcome = undefined;
      return;
    }
    if (f.t === 'err' && f.id === null) this.linkError = f;
    if ((f.t === 'res' || f.t === 'err') && typeof f.id === 'number') {
      this.answered.add(f.id);
      const w = this.waiters.get(f.id);
      if (w) {
        this.waiters.delete(f.id);
        w(f);
      }
    }
  }
}
