import { z } from 'zod';
import { QmpError, type QmpClient } from './qmp.js';

/**
 * What the QEMU adapter and its channels ask of QEMU's object tree, in one
 * place: the children of a QOM path, a string property, the root ports with
 * nothing in them, and QEMU's own words for an error.
 */
export type QomQmp = Pick<QmpClient, 'execute'>;

export const PERIPHERAL = '/machine/peripheral';
export const PERIPHERAL_ANON = '/machine/peripheral-anon';

export const QomList = z.array(z.object({ name: z.string(), type: z.string() }));
export type QomProperty = z.infer<typeof QomList>[number];

export async function qomList(qmp: QomQmp, path: string): Promise<QomProperty[]> {
  try {
    return await qmp.execute('qom-list', { path }, { result: QomList });
  } catch (cause) {
    // peripheral-anon does not exist until the VM has an anonymous device.
    if (cause instanceof QmpError && cause.errorClass === 'DeviceNotFound') return [];
    throw cause;
  }
}

export function qomGetString(qmp: QomQmp, path: string, property: string): Promise<string> {
  return qmp.execute('qom-get', { path, property }, { result: z.string() });
}

/** Root ports (by id; only those in `only` when given) with nothing plugged into them, in declaration order. */
export async function freeRootPorts(qmp: QomQmp, only?: readonly string[]): Promise<string[]> {
  const free: string[] = [];
  for (const c of await qomList(qmp, PERIPHERAL)) {
    if (c.type !== 'child<pcie-root-port>' || (only && !only.includes(c.name))) continue;
    const bus = (await qomList(qmp, `${PERIPHERAL}/${c.name}`)).find((b) => /^child<PCIE?>$/.test(b.type));
    if (!bus) continue;
    const occupants = (await qomList(qmp, `${PERIPHERAL}/${c.name}/${bus.name}`)).filter((o) => o.name.startsWith('child['));
    if (occupants.length === 0) free.push(c.name);
  }
  return free;
}

/** QmpClient.execute's options from an attach's or a detach's. */
export function callOptions(opts: { timeoutMs?: number; signal?: AbortSignal }): { timeoutMs?: number; signal?: AbortSignal } {
  return { ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}), ...(opts.signal ? { signal: opts.signal } : {}) };
}

/** QEMU's own words when it answered; the error's otherwise. */
export function describe(err: unknown): string {
  if (err instanceof QmpError) return err.errorDesc ?? err.message;
  return err instanceof Error ? err.message : String(err);
}
