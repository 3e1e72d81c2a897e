import { unlinkSync } from 'node:fs';
import net from 'node:net';
import { pino } from 'pino';
import { ALL_METHODS } from '../portals/index.js';
import { OpenDialog } from '../portals/file-chooser/schema.js';
import { Connection, type AnyHandler } from '../src/protocol/connection.js';
import { methodTable } from '../src/protocol/methods.js';
import { uncheckedMethods } from './link-floor.js';

/**
 * The host end of bench/link-floor.ts, in a process of its own as the
 * daemon is: `node link-peer.js SOCKET raw|ours`. `raw` answers each
 * 4-byte-length JSON frame with a canned answer frame (JSON.parse and
 * JSON.stringify, nothing else); `ours` is src/protocol/connection.ts with
 * the real method table, answering fileChooser.open with the same canned
 * result, every frame checked as the daemon checks it.
 */
export const CANNED_RESULT = { response: 0, results: { uris: ['file:///run/user/1000/doc/by-app/io.github.xdp_vm.vm.work/6e0ef7e1/bench.txt'], writable: false } };

const [socket, mode] = process.argv.slice(2) as [string, 'raw' | 'ours' | 'unchecked'];
try {
  unlinkSync(socket);
} catch {
  /* none */
}
const server = net.createServer((stream) => {
  if (mode === 'raw') {
    let buf: Buffer = Buffer.alloc(0);
    stream.on('data', (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const len = buf.readUInt32BE(0);
        const req = JSON.parse(buf.subarray(4, 4 + len).toString('utf8')) as { id: number };
        buf = buf.subarray(4 + len);
        const json = JSON.stringify({ t: 'res', id: req.id, result: CANNED_RESULT });
        const out = Buffer.allocUnsafe(4 + Buffer.byteLength(json));
        out.writeUInt32BE(out.length - 4, 0);
        out.write(json, 4);
        stream.write(out);
      }
    });
    return;
  }
  const handlers = new Map<string, AnyHandler>([[OpenDialog.name, async () => CANNED_RESULT]]);
  const conn = new Connection({ role: 'host', stream, methods: mode === 'unchecked' ? uncheckedMethods() : methodTable(ALL_METHODS), handlers, log: pino({ level: 'warn' }, pino.destination(2)) });
  conn.acceptGuest('work').catch(() => undefined);
});
server.listen(socket, () => process.stdout.write('ready\n'));
process.stdin.on('end', () => process.exit(0)).resume();
