import type { Duplex } from 'node:stream';
import { ALL_METHODS, PORTALS } from '../../portals/index.js';
import type { VmConfig } from '../config/schema.js';
import type { Bus } from '../dbus/bus.js';
import type { Logger } from '../log.js';
import { Connection, type AnyHandler } from '../protocol/connection.js';
import { methodTable } from '../protocol/methods.js';
import { Ping } from '../protocol/session.js';
import type { DocumentStore } from './documents.js';
import type { VirtiofsdSupervisor } from './virtiofsd.js';

/**
 * Everything the host holds for one VM: its current link (identified by the
 * endpoint it arrived on) and its share. A new link replaces the old one, so a
 * guest cannot pile up connections.
 */
const METHODS = methodTable(ALL_METHODS);

export interface VmSessionDeps {
  hostBus: Bus;
  docs: DocumentStore;
  log: Logger;
  nextRequestId: () => string;
}

export class VmSession {
  private conn: Connection | undefined;
  private readonly handlers: ReadonlyMap<string, AnyHandler>;
  share: VirtiofsdSupervisor | undefined;
  readonly log: Logger;

  constructor(
    readonly vm: VmConfig,
    deps: VmSessionDeps,
  ) {
    this.log = deps.log.child({ vm: vm.name });
    const entries: [string, AnyHandler][] = [[Ping.name, async (params) => ({ seq: (params as { seq: number }).seq })]];
    entries.push(...PORTALS.flatMap((p) => Object.entries(p.hostHandlers({ vm, hostBus: deps.hostBus, docs: deps.docs, log: this.log, nextRequestId: deps.nextRequestId }))));
    this.handlers = new Map(entries);
  }

  get connected(): boolean {
    return !!this.conn && !this.conn.isClosed && this.conn.negotiatedVersion !== undefined;
  }

  /** A link arrived on this VM's endpoint. */
  attach(stream: Duplex, endpoint: string): Connection {
    const previous = this.conn;
    const conn = new Connection({ role: 'host', stream, methods: METHODS, handlers: this.handlers, log: this.log.child({ endpoint }) });
    this.conn = conn;
    previous?.close('replaced by a new connection from the same VM');
    conn.once('close', (reason: string) => {
      if (this.conn === conn) this.conn = undefined;
      this.log.info({ reason }, 'guest link closed');
    });
    conn.acceptGuest(this.vm.name).then(
      (hello) => this.log.info({ agent: hello.agent, endpoint }, 'guest connected'),
      (err: Error) => this.log.warn({ endpoint }, `guest link failed before the handshake: ${err.message}`),
    );
    return conn;
  }

  close(reason: string): void {
    this.conn?.close(reason);
  }
}
