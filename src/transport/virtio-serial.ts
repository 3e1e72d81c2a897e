import net from 'node:net';
import { EventEmitter } from 'node:events';
import { Backoff } from '../backoff.js';

/**
 * Host side of virtio-serial: QEMU's chardev is a Unix socket server behind
 * the guest's virtserialport; the host connects to it. The socket path is the
 * VM's identity. QEMU accepts one client at a time and the VM may restart, so
 * the connector keeps reconnecting with a capped backoff.
 */
export class SerialConnector extends EventEmitter {
  private stopped = false;
  private current: net.Socket | undefined;
  private readonly backoff: Backoff;

  constructor(
    readonly socket: string,
    minDelayMs = 200,
    maxDelayMs = 5000,
  ) {
    super();
    this.backoff = new Backoff(minDelayMs, maxDelayMs);
  }

  start(): void {
    this.attempt();
  }

  private attempt(): void {
    if (this.stopped) return;
    const s = net.connect(this.socket);
    s.once('connect', () => {
      this.backoff.reset();
      this.current = s;
      s.once('close', () => {
        this.current = undefined;
        this.schedule();
      });
      this.emit('link', s);
    });
    s.once('error', (err: NodeJS.ErrnoException) => {
      if (this.current === s) return; // 'close' follows and reschedules
      this.emit('unreachable', err);
      s.destroy();
      this.schedule();
    });
  }

  private schedule(): void {
    if (!this.stopped) this.backoff.schedule(() => this.attempt());
  }

  /** Drop the current link and reconnect, e.g. after the peer sent garbage. */
  reconnect(): void {
    this.current?.destroy();
  }

  stop(): void {
    this.stopped = true;
    this.backoff.stop();
    this.current?.destroy();
  }
}
