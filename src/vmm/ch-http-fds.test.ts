import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatRequest, requestWithFds, ResponseReader } from './ch-http-fds.js';

/**
 * The hand-written HTTP/1.1 exchange. That descriptors really arrive as
 * SCM_RIGHTS is checked end to end in cloud-hypervisor.test.ts, through a
 * receiver that can see them; here: the bytes written, and the reading of
 * every way an answer can be framed or cut short.
 */

const bytes = (s: string) => Buffer.from(s, 'latin1');

describe('formatRequest', () => {
  it('writes the request line, the headers cloud-hypervisor reads, and the body', () => {
    const body = bytes('{"id":"n"}');
    expect(formatRequest({ method: 'PUT', path: '/api/v1/vm.add-net', body, contentType: 'application/json' }).toString('latin1')).toBe(
      'PUT /api/v1/vm.add-net HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{"id":"n"}',
    );
  });

  it('refuses what would break the request line or a header', () => {
    const body = bytes('{}');
    expect(() => formatRequest({ method: 'PUT', path: '/a HTTP/1.1\r\nX: y', body, contentType: 'application/json' })).toThrow(/malformed/);
    expect(() => formatRequest({ method: 'put x', path: '/a', body, contentType: 'application/json' })).toThrow(/malformed/);
    expect(() => formatRequest({ method: 'PUT', path: '/a', body, contentType: 'a\r\nX: y' })).toThrow(/malformed/);
  });
});

describe('ResponseReader', () => {
  const feed = (reader: ResponseReader, text: string, chunk = 1) => {
    const data = bytes(text);
    for (let i = 0; i < data.length; i += chunk) {
      const res = reader.push(data.subarray(i, i + chunk));
      if (res) return res;
    }
    return undefined;
  };

  it('reads a Content-Length body however the bytes are split, and nothing past it', () => {
    const answer = 'HTTP/1.1 200 \r\nServer: Cloud Hypervisor API\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n{"id":"n","bdf":"0000:00:06.0"}junk';
    for (const chunk of [1, 7, 1000]) {
      const res = feed(new ResponseReader(1024), answer, chunk);
      expect(res && { status: res.status, type: res.headers['content-type'], body: res.body.toString() }).toEqual({ status: 200, type: 'application/json', body: '{"id":"n","bdf":"0000:00:06.0"}' });
    }
  });

  it('a 204 is complete at the end of its headers; a body without length ends with the connection', () => {
    expect(feed(new ResponseReader(1024), 'HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n')).toMatchObject({ status: 204, body: Buffer.alloc(0) });
    const reader = new ResponseReader(1024);
    expect(feed(reader, 'HTTP/1.0 400 Bad Request\r\n\r\nno good', 4)).toBeUndefined();
    expect(reader.end()).toMatchObject({ status: 400, body: bytes('no good') });
  });

  it('skips an interim 100 Continue', () => {
    expect(feed(new ResponseReader(1024), 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}', 1000)).toMatchObject({ status: 200, body: bytes('{}') });
  });

  it('refuses what it cannot read, and oversized answers', () => {
    expect(() => feed(new ResponseReader(1024), 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n', 1000)).toThrow(/Transfer-Encoding chunked/);
    expect(() => feed(new ResponseReader(1024), 'SPDY/3 200 OK\r\n\r\n', 1000)).toThrow(/not an HTTP\/1.x status line/);
    expect(() => feed(new ResponseReader(1024), 'HTTP/1.1 200 OK\r\nno colon\r\n\r\n', 1000)).toThrow(/malformed answer header/);
    expect(() => feed(new ResponseReader(1024), 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n', 1000)).toThrow(/conflicting Content-Length/);
    expect(() => feed(new ResponseReader(1024), 'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', 1000)).toThrow(/invalid Content-Length/);
    expect(() => feed(new ResponseReader(10), 'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n', 1000)).toThrow('answer larger than 10 bytes');
    expect(() => feed(new ResponseReader(10), `HTTP/1.1 200 OK\r\n\r\n${'x'.repeat(11)}`, 1000)).toThrow('answer larger than 10 bytes');
    expect(() => feed(new ResponseReader(10), `HTTP/1.1 200 OK\r\nX: ${'x'.repeat(70_000)}`, 100_000)).toThrow(/headers larger than/);
  });

  it('an answer cut short is an error, not a short body', () => {
    const cut = new ResponseReader(1024);
    feed(cut, 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"a"', 1000);
    expect(() => cut.end()).toThrow('the connection closed after 4 of 10 body bytes');
    const headless = new ResponseReader(1024);
    feed(headless, 'HTTP/1.1 200 OK\r\nCont', 1000);
    expect(() => headless.end()).toThrow('the connection closed in the middle of the answer headers');
    expect(() => new ResponseReader(1024).end()).toThrow('the connection closed without an answer');
  });
});

describe('requestWithFds over a Unix socket', () => {
  let dir: string;
  let sock: string;
  let server: net.Server | undefined;
  let fd: number;

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-chfds-'));
    sock = path.join(dir, 'api.sock');
    fd = openSync(path.join(dir, 'queue'), 'w+');
  });

  afterEach(async () => {
    closeSync(fd);
    if (server) await new Promise((r) => server!.close(r));
    server = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  /** A server that collects the request bytes and, once it has `until`, writes `answer` (in two parts) and maybe closes. */
  async function serve(answer: string | undefined, opts: { close?: boolean } = {}): Promise<{ seen: () => string }> {
    let seen = '';
    server = net.createServer((c) => {
      c.on('data', (d: Buffer) => {
        seen += d.toString('latin1');
        if (answer === undefined || !seen.includes('\r\n\r\n{}')) return;
        c.write(answer.slice(0, 10));
        setTimeout(() => (opts.close ? c.end(answer.slice(10)) : c.write(answer.slice(10))), 20);
      });
      c.on('error', () => undefined);
    });
    await new Promise<void>((r) => server!.listen(sock, r));
    return { seen: () => seen };
  }

  const req = { method: 'PUT', path: '/api/v1/vm.add-net', body: bytes('{}'), contentType: 'application/json' };

  it('sends the request and resolves with the answer, whole, before the server closes', async () => {
    const srv = await serve('HTTP/1.1 200 \r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n{"id":"n","bdf":"0000:00:06.0"}');
    const res = await requestWithFds(sock, { ...req, fds: [fd] }, { timeoutMs: 2000 });
    expect({ status: res.status, body: res.body.toString() }).toEqual({ status: 200, body: '{"id":"n","bdf":"0000:00:06.0"}' });
    expect(srv.seen()).toBe(formatRequest(req).toString('latin1'));
  });

  it('a connection-framed answer ends with the connection', async () => {
    await serve('HTTP/1.1 500 Internal Server Error\r\n\r\nError from device manager', { close: true });
    const res = await requestWithFds(sock, { ...req, fds: [fd] }, { timeoutMs: 2000 });
    expect({ status: res.status, body: res.body.toString() }).toEqual({ status: 500, body: 'Error from device manager' });
  });

  it('fails with the code of what went wrong', async () => {
    await expect(requestWithFds(path.join(dir, 'absent.sock'), { ...req, fds: [fd] })).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(requestWithFds(sock, { ...req, fds: [] })).rejects.toThrow('requestWithFds takes 1 to 8 descriptors, not 0');
    await serve(undefined);
    await expect(requestWithFds(sock, { ...req, fds: [fd] }, { timeoutMs: 150 })).rejects.toMatchObject({ code: 'ETIMEDOUT', message: 'no answer within 150 ms' });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await expect(requestWithFds(sock, { ...req, fds: [fd] }, { timeoutMs: 2000, signal: ac.signal })).rejects.toMatchObject({ code: 'ABORT_ERR' });
    await expect(requestWithFds(sock, { ...req, fds: [1_000_000] }, { timeoutMs: 2000 })).rejects.toMatchObject({ code: 'EBADF' });
  });
});
