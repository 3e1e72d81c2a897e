import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { childLogger, type Logger } from '../../log.js';

/**
 * Host side of the guest command agent (guest-agent.sh) on a dedicated
 * virtio-serial port: one shell script at a time, with its stdout, stderr and
 * exit status. See guest-agent.sh for the line protocol.
 */

export interface AgentResult {
  stdout: string;
  stderr: string;
  status: number;
}

export interface RunOptions {
  /** Host-side limit; a second earlier the guest SIGKILLs the shell running the command. Default 30 s. */
  timeoutMs?: number;
}

export class AgentError extends Error {
  constructor(message: string, readonly result?: AgentResult) {
    super(message);
    this.name = 'AgentError';
  }
}

interface Running {
  id: string;
  out: Buffer;
  err: Buffer;
  resolve(result: AgentResult): void;
  reject(err: Error): void;
}

export class GuestAgent {
  private buffer: Buffer = Buffer.alloc(0);
  /** Set while raw output bytes are streaming in, up to the `<id> EOF` marker. */
  private raw: { id: string; stream: 'out' | 'err'; marker: Buffer } | undefined;
  private current: Running | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private nextId = 1;
  private closed: Error | undefined;
  private readyWaiter: { resolve(uptime: number): void; reject(err: Error): void } | undefined;
  /** Guest uptime (s) reported by the agent's first READY. */
  readyUptime: number | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly log: Logger,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.onClose(err));
    socket.on('close', () => this.onClose(new Error('agent connection closed')));
  }

  /** Connect to the port's host socket and wait for the guest agent's READY. */
  static async connect(socketPath: string, opts: { timeoutMs: number; name?: string; signal?: AbortSignal }): Promise<GuestAgent> {
    const socket = await openWhenListening(socketPath, Date.now() + opts.timeoutMs);
    const agent = new GuestAgent(socket, childLogger({ component: 'e2e-agent', vm: opts.name }));
    try {
      await agent.waitReady(opts.timeoutMs, opts.signal);
    } catch (err) {
      agent.close();
      throw err;
    }
    return agent;
  }

  /** Run `script` with the guest's /bin/sh in `/`; resolves whatever its exit status. */
  run(script: string, opts: RunOptions = {}): Promise<AgentResult> {
    const job = this.queue.then(() => this.runNow(script, opts.timeoutMs ?? 30_000));
    this.queue = job.catch(() => undefined);
    return job;
  }

  /** Like run(), but rejects unless the status is 0; resolves with stdout. */
  async check(script: string, opts: RunOptions = {}): Promise<string> {
    const result = await this.run(script, opts);
    if (result.status !== 0) {
      throw new AgentError(`guest command failed with status ${result.status}: ${script}\n${result.stderr.trim()}`, result);
    }
    return result.stdout;
  }

  /** Fire a command whose reply cannot come (poweroff). */
  send(script: string): void {
    if (this.closed) return;
    this.socket.write(frame(`x${this.nextId++}`, 5, script));
  }

  close(): void {
    this.socket.destroy();
  }

  private runNow(script: string, timeoutMs: number): Promise<AgentResult> {
    if (this.closed) return Promise.reject(new AgentError(`agent unavailable: ${this.closed.message}`));
    const id = `c${this.nextId++}-${randomBytes(8).toString('hex')}`;
    const guestLimit = Math.max(1, Math.floor(timeoutMs / 1000) - 1);
    return new Promise<AgentResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.current = undefined;
        reject(new AgentError(`guest command timed out after ${timeoutMs} ms: ${script}`));
      }, timeoutMs);
      const settle = () => {
        clearTimeout(timer);
        this.current = undefined;
      };
      this.current = {
        id,
        out: Buffer.alloc(0),
        err: Buffer.alloc(0),
        resolve: (r) => (settle(), resolve(r)),
        reject: (e) => (settle(), reject(e)),
      };
      this.socket.write(frame(id, guestLimit, script));
    });
  }

  private waitReady(timeoutMs: number, signal?: AbortSignal): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const fail = (err: Error) => {
        clearTimeout(timer);
        this.readyWaiter = undefined;
        reject(err);
      };
      const timer = setTimeout(() => fail(new AgentError(`guest agent not ready within ${timeoutMs} ms`)), timeoutMs);
      signal?.addEventListener('abort', () => fail(new AgentError('waiting for the guest agent was aborted')), { once: true });
      this.readyWaiter = {
        resolve: (uptime) => {
          clearTimeout(timer);
          this.readyWaiter = undefined;
          resolve(uptime);
        },
        reject: fail,
      };
      if (this.closed) fail(new AgentError(`agent connection lost before READY: ${this.closed.message}`));
    });
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    for (;;) {
      if (this.raw) {
        const end = this.buffer.indexOf(this.raw.marker);
        if (end < 0) return;
        this.appendOutput(this.raw.id, this.raw.stream, this.buffer.subarray(0, end));
        this.buffer = this.buffer.subarray(end + this.raw.marker.length);
        this.raw = undefined;
        continue;
      }
      const nl = this.buffer.indexOf(0x0a);
      if (nl < 0) return;
      const line = this.buffer.subarray(0, nl).toString('utf8').replace(/\r$/, '');
      this.buffer = this.buffer.subarray(nl + 1);
      this.onLine(line);
    }
  }

  private onLine(line: string): void {
    const [verb, id, rest] = splitTwice(line);
    if (verb === 'READY') {
      const uptime = Number(id);
      this.readyUptime ??= uptime;
      this.readyWaiter?.resolve(uptime);
      return;
    }
    if (verb === 'OUT' || verb === 'ERR') {
      // The agent ends raw output with a newline of its own before the marker.
      this.raw = { id, stream: verb === 'OUT' ? 'out' : 'err', marker: Buffer.from(`\n${id} EOF\n`) };
      return;
    }
    const job = this.current;
    if (verb === 'END' && job?.id === id) {
      job.resolve({ stdout: job.out.toString('utf8'), stderr: job.err.toString('utf8'), status: Number(rest) });
    } else if (verb !== 'END') this.log.warn({ line }, 'unexpected agent line');
    // Otherwise: the end of a command we gave up on (timeout) or fired without waiting.
  }

  private appendOutput(id: string, stream: 'out' | 'err', bytes: Buffer): void {
    const job = this.current;
    if (!job || job.id !== id) return;
    job[stream] = Buffer.concat([job[stream], bytes]);
  }

  private onClose(err: Error): void {
    if (this.closed) return;
    this.closed = err;
    this.current?.reject(new AgentError(`agent connection lost during a command: ${err.message}`));
    this.readyWaiter?.reject(new AgentError(`agent connection lost before READY: ${err.message}`));
  }
}

/** QEMU binds a chardev socket a moment before it listens on it: retry a refused connect. */
async function openWhenListening(socketPath: string, deadline: number): Promise<net.Socket> {
  for (;;) {
    const socket = net.createConnection({ path: socketPath });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
      return socket;
    } catch (err) {
      socket.destroy();
      if ((err as NodeJS.ErrnoException).code !== 'ECONNREFUSED' || Date.now() > deadline) throw err;
      await sleep(10);
    }
  }
}

/** A RUN header and the script's lines: the agent reads exactly that many. */
function frame(id: string, limitS: number, script: string): string {
  const lines = script.endsWith('\n') ? script.slice(0, -1).split('\n') : script.split('\n');
  return `RUN ${id} ${limitS} ${lines.length}\n${lines.join('\n')}\n`;
}

function splitTwice(line: string): [string, string, string] {
  const a = line.indexOf(' ');
  if (a < 0) return [line, '', ''];
  const b = line.indexOf(' ', a + 1);
  if (b < 0) return [line.slice(0, a), line.slice(a + 1), ''];
  return [line.slice(0, a), line.slice(a + 1, b), line.slice(b + 1)];
}
