import net from 'node:net';
import { sendWithFds } from '../native/fds.js';

/**
 * One HTTP/1.1 request on a Unix stream socket with descriptors attached to
 * its first byte as SCM_RIGHTS, for the one cloud-hypervisor call that takes
 * them (`vm.add-net` with a tap's queue). Node's http client cannot send
 * ancillary data, so the request is written by hand and its answer parsed
 * here: a status line, headers, and a body framed by Content-Length (or by
 * the end of the connection). cloud-hypervisor's HTTP server never answers
 * chunked, so a chunked answer is refused rather than decoded.
 */

export interface FdRequest {
  method: string;
  /** The request target, e.g. `/api/v1/vm.add-net`. */
  path: string;
  body: Buffer;
  contentType: string;
  /** Sent once, with the request's first byte; the caller keeps and closes them. */
  fds: number[];
}

export interface FdResponse {
  status: number;
  /** Header names in lower case. */
  headers: Record<string, string>;
  body: Buffer;
}

export interface FdRequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Refuse answers whose body is larger; default 10 MiB. */
  maxBodyBytes?: number;
}

const MAX_HEAD_BYTES = 64 * 1024;
/** What the native sendFds takes in one message. */
const MAX_FDS = 8;

/** The bytes of the request: nothing but what the server needs, and Connection: close, as the call is the connection's only one. */
export function formatRequest(req: Omit<FdRequest, 'fds'>): Buffer {
  if (!/^[A-Z]+$/.test(req.method) || !/^\/[\x21-\x7e]*$/.test(req.path) || /[\r\n]/.test(req.contentType)) {
    throw new Error(`refusing to write a malformed request line or header (${req.method} ${JSON.stringify(req.path)})`);
  }
  const head =
    `${req.method} ${req.path} HTTP/1.1\r\n` +
    'Host: localhost\r\n' +
    'Accept: application/json\r\n' +
    `Content-Type: ${req.contentType}\r\n` +
    `Content-Length: ${req.body.length}\r\n` +
    'Connection: close\r\n\r\n';
  return Buffer.concat([Buffer.from(head, 'latin1'), req.body]);
}

function withCode(message: string, code?: string, cause?: unknown): NodeJS.ErrnoException {
  return Object.assign(new Error(message, cause === undefined ? undefined : { cause }), code ? { code } : {});
}

/**
 * Reads one answer from the bytes pushed in. `push` returns the answer once it
 * is complete; `end` is called when the peer closed and returns what a
 * connection-framed body amounts to, or throws when the answer was cut short.
 */
export class ResponseReader {
  private buf: Buffer = Buffer.alloc(0);
  private head: { status: number; headers: Record<string, string>; length: number | undefined } | undefined;

  constructor(private readonly maxBodyBytes: number) {}

  push(chunk: Buffer): FdResponse | undefined {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    for (;;) {
      if (!this.head) {
        const end = this.buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (this.buf.length > MAX_HEAD_BYTES) throw withCode(`answer headers larger than ${MAX_HEAD_BYTES} bytes`);
          return undefined;
        }
        const head = parseHead(this.buf.subarray(0, end).toString('latin1'));
        this.buf = this.buf.subarray(end + 4);
        // An interim answer (1xx) is followed by the real one.
        if (head.status < 200) continue;
        if (head.length !== undefined && head.length > this.maxBodyBytes) throw withCode(`answer larger than ${this.maxBodyBytes} bytes`);
        this.head = head;
      }
      const { status, headers, length } = this.head;
      const bodyless = status === 204 || status === 304;
      if (bodyless || length !== undefined) {
        const want = bodyless ? 0 : (length ?? 0);
        if (this.buf.length < want) return undefined;
        return { status, headers, body: Buffer.from(this.buf.subarray(0, want)) };
      }
      if (this.buf.length > this.maxBodyBytes) throw withCode(`answer larger than ${this.maxBodyBytes} bytes`);
      return undefined;
    }
  }

  end(): FdResponse {
    if (!this.head) throw withCode(this.buf.length ? 'the connection closed in the middle of the answer headers' : 'the connection closed without an answer');
    const { status, headers, length } = this.head;
    if (length !== undefined) throw withCode(`the connection closed after ${this.buf.length} of ${length} body bytes`);
    return { status, headers, body: Buffer.from(this.buf) };
  }
}

function parseHead(text: string): { status: number; headers: Record<string, string>; length: number | undefined } {
  const [statusLine = '', ...lines] = text.split('\r\n');
  const m = /^HTTP\/1\.[01] ([1-5]\d\d)(?: [^\r\n]*)?$/.exec(statusLine);
  if (!m) throw withCode(`not an HTTP/1.x status line: ${JSON.stringify(statusLine.slice(0, 100))}`);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw withCode(`malformed answer header: ${JSON.stringify(line.slice(0, 100))}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'content-length' && name in headers && headers[name] !== value) throw withCode('the answer has conflicting Content-Length headers');
    headers[name] = value;
  }
  if (headers['transfer-encoding'] !== undefined) throw withCode(`the answer uses Transfer-Encoding ${headers['transfer-encoding']}, which this client does not read`);
  const cl = headers['content-length'];
  if (cl !== undefined && !/^\d{1,15}$/.test(cl)) throw withCode(`the answer has an invalid Content-Length ${JSON.stringify(cl)}`);
  return { status: Number(m[1]), headers, length: cl === undefined ? undefined : Number(cl) };
}

/**
 * Connect to `socketPath`, send `req` with its descriptors, and resolve with
 * the answer. Rejects with an Error carrying `code` (the socket's errno code,
 * ETIMEDOUT, or ABORT_ERR) when no complete answer came.
 */
export function requestWithFds(socketPath: string, req: FdRequest, opts: FdRequestOptions = {}): Promise<FdResponse> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  let data: Buffer;
  try {
    if (req.fds.length < 1 || req.fds.length > MAX_FDS) throw new Error(`requestWithFds takes 1 to ${MAX_FDS} descriptors, not ${req.fds.length}`);
    data = formatRequest(req);
  } catch (err) {
    return Promise.reject(err as Error);
  }
  const reader = new ResponseReader(opts.maxBodyBytes ?? 10 * 1024 * 1024);
  return new Promise<FdResponse>((resolve, reject) => {
    let settled = false;
    const socket = net.createConnection(socketPath);
    const finish = (err: Error | undefined, res?: FdResponse) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err) reject(err);
      else resolve(res!);
    };
    const step = (f: () => FdResponse | undefined) => {
      try {
        const res = f();
        if (res) finish(undefined, res);
      } catch (err) {
        finish(err as Error);
      }
    };
    const onAbort = () => finish(withCode('aborted', 'ABORT_ERR', opts.signal?.reason));
    const timer = setTimeout(() => finish(withCode(`no answer within ${timeoutMs} ms`, 'ETIMEDOUT')), timeoutMs);
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('connect', () => {
      sendWithFds(socket, data, req.fds, timeoutMs).catch((err: NodeJS.ErrnoException) =>
        finish(withCode(`could not send the request with its descriptors: ${err.message}`, err.code, err)),
      );
    });
    socket.on('data', (chunk: Buffer) => step(() => reader.push(chunk)));
    socket.on('end', () => step(() => reader.end()));
    socket.on('error', (err: NodeJS.ErrnoException) => finish(withCode(err.message, err.code, err)));
    socket.on('close', () => finish(withCode('the connection closed without an answer')));
  });
}
