import type { Bus } from '../src/dbus/bus.js';
import type { HostLink } from '../src/guest/host-link.js';
import type { Logger } from '../src/log.js';
import { PORTALS, type PortalName } from './index.js';

/**
 * The guest halves on the guest bus: exactly those of the portals the host
 * serves this VM, re-done whenever the host says the set changed. An app
 * (and the guest's frontend) then sees only interfaces that can answer.
 * `undefined` means the host did not say (a version-1 host, or none reached
 * yet): every portal with a guest half is exported, and the host answers.
 */
export class GuestPortals {
  private readonly exported = new Map<PortalName, () => void>();
  private applying: Promise<void> = Promise.resolve();

  constructor(
    private readonly bus: Bus,
    private readonly host: HostLink,
    private readonly log: Logger,
  ) {}

  get names(): PortalName[] {
    return [...this.exported.keys()];
  }

  /** Export the halves of `served` (or of every portal), unexport the rest; calls are applied in order. */
  serve(served: readonly string[] | undefined): Promise<void> {
    this.applying = this.applying.then(() => this.apply(served));
    return this.applying;
  }

  close(): void {
    for (const unexport of this.exported.values()) unexport();
    this.exported.clear();
  }

  private async apply(served: readonly string[] | undefined): Promise<void> {
    for (const p of PORTALS) {
      const wanted = 'guest' in p && !!p.guest && (served === undefined || served.includes(p.name));
      const unexport = this.exported.get(p.name);
      if (wanted && !unexport && 'guest' in p && p.guest) {
        const half = await p.guest();
        this.exported.set(p.name, half(this.bus, this.host, this.log));
      } else if (!wanted && unexport) {
        unexport();
        this.exported.delete(p.name);
      }
    }
    this.log.info({ portals: this.names }, 'serving these portals on the guest bus');
  }
}
