import { Duplex } from 'node:stream';
import { close, read, write } from 'node:fs';

/**
 * A Duplex over a character device such as /dev/virtio-ports/<name>. Node's
 * net.Socket refuses character devices, so reads and writes go through the
 * fs thread pool. A zero-length read means the host side is not connected.
 */
export class FdDuplex extends Duplex {
  private reading = false;
  private fdClosed = false;

  constructor(private readonly fd: number) {
    super();
  }

  override _read(size: number): void {
    if (this.reading || this.fdClosed) return;
    this.reading = true;
    const buf = Buffer.allocUnsafe(Math.max(size, 65536));
    read(this.fd, buf, 0, buf.length, null, (err, n) => {
      this.reading = false;
      if (err) return this.destroy(err);
      if (n === 0) return void this.push(null);
      if (this.push(buf.subarray(0, n))) this._read(size);
    });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const writeAll = (offset: number): void => {
      write(this.fd, chunk, offset, chunk.length - offset, null, (err, n) => {
        if (err) return cb(err);
        if (offset + n < chunk.length) return writeAll(offset + n);
        cb();
      });
    };
    writeAll(0);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.fdClosed) return cb(err);
    this.fdClosed = true;
    close(this.fd, () => cb(err));
  }
}
