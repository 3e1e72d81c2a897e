import { Duplex } from 'node:stream';

/** Two connected in-memory Duplex ends, for tests of the layers above transport. */
export function memoryPair(): [Duplex, Duplex] {
  const make = (): Duplex & { peer?: Duplex } =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        const peer = (this as Duplex & { peer?: Duplex }).peer!;
        if (!peer.destroyed) peer.push(chunk);
        cb();
      },
      final(cb) {
        (this as Duplex & { peer?: Duplex }).peer?.push(null);
        cb();
      },
      destroy(err, cb) {
        const peer = (this as Duplex & { peer?: Duplex }).peer;
        if (peer && !peer.destroyed) peer.push(null);
        cb(err);
      },
    });
  const a = make();
  const b = make();
  a.peer = b;
  b.peer = a;
  return [a, b];
}
