import { closeSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { BusCallError } from '../../src/dbus/bus.js';
import { helperWords, type HelperClient } from '../../src/helper/client.js';
import { systemBusAddress, tapNameProblem } from '../../src/helper/commands.js';

/**
 * The taps behind a VM's bridge and vm-only NICs, all made by the privileged
 * helper (the daemon has no privilege): a vm-only network's bridge brought
 * up, a tap made on the bridge for this user, and one descriptor of it opened
 * for the VMM. Which tap a (VM, network) NIC is on is kept in a file beside
 * passt's, so a restarted daemon can still remove it when the NIC goes.
 */
export type HelperConnect = () => Promise<HelperClient>;

export interface TapHandle {
  tap: string;
  /** One queue of the tap; the caller closes it once the VMM holds its own copy. */
  fd: number;
  /** vm-only: the host's own address on the bridge, ADDR/LEN. */
  hostAddress?: string;
}

export class Taps {
  constructor(
    private readonly connect: HelperConnect,
    private readonly runtimeDir: string,
    private readonly vm: string,
  ) {}

  /** A tap on `bridge` for network `name`, with its descriptor; a vm-only bridge is brought up first. */
  async create(name: string, bridge: string, vmOnly: boolean): Promise<TapHandle> {
    return this.withHelper(async (h) => {
      const hostAddress = vmOnly ? await h.vmOnlyUp(bridge) : undefined;
      const tap = await h.tapCreate(bridge);
      this.record(name, tap);
      try {
        return { tap, fd: await h.tapOpen(tap), ...(hostAddress ? { hostAddress } : {}) };
      } catch (err) {
        await h.tapDelete(tap).catch(() => undefined);
        this.forget(name);
        throw err;
      }
    });
  }

  /** Delete the tap and its record; a tap already gone (the helper says so) is not an error. */
  async remove(name: string, tap: string): Promise<void> {
    await this.withHelper((h) =>
      h.tapDelete(tap).catch((err: unknown) => {
        if (!(err instanceof BusCallError && err.errorName.endsWith('.Error.NotFound'))) throw err;
      }),
    );
    this.forget(name);
  }

  /** The tap recorded for network `name`, if any. */
  recorded(name: string): string | undefined {
    try {
      const tap = readFileSync(this.file(name), 'utf8').trim();
      return tapNameProblem(tap) === undefined ? tap : undefined;
    } catch {
      return undefined;
    }
  }

  static close(fd: number): void {
    try {
      closeSync(fd);
    } catch {
      // Already closed: nothing to give back.
    }
  }

  private record(name: string, tap: string): void {
    mkdirSync(this.runtimeDir, { recursive: true, mode: 0o700 });
    writeFileSync(this.file(name), `${tap}\n`, { mode: 0o600 });
  }

  private forget(name: string): void {
    rmSync(this.file(name), { force: true });
  }

  private file(name: string): string {
    return path.join(this.runtimeDir, `${this.vm}-net-${name}.tap`);
  }

  /** One helper connection per operation; its refusals keep the helper's own sentence. */
  private async withHelper<T>(op: (h: HelperClient) => Promise<T>): Promise<T> {
    let h: HelperClient;
    try {
      h = await this.connect();
    } catch (err) {
      throw new Error(`the privileged helper cannot be reached on the system bus (${systemBusAddress()}): ${(err as Error).message}`);
    }
    try {
      return await op(h);
    } catch (err) {
      throw new Error(helperWords(err));
    } finally {
      h.close();
    }
  }
}
