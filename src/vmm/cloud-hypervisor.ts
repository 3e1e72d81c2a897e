import http from 'node:http';
import { z } from 'zod';
import { childLogger, type Logger } from '../log.js';
import {
  assertSafeId,
  VmmError,
  type AttachedShare,
  type AttachOptions,
  type DetachOptions,
  type DeviceHandle,
  type DeviceInfo,
  type NetCapability,
  type NetSpec,
  type ShareInfo,
  type ShareCapability,
  type ShareSpec,
  type VmmAdapter,
} from './adapter.js';
import { AdapterBase, checkNetSpec, checkShareSpec } from './adapter-base.js';
import { requestWithFds } from './ch-http-fds.js';
import { nicDeviceId, shareDeviceId } from './qemu.js';

/**
 * The cloud-hypervisor adapter: its REST API (HTTP/1.1 on the `--api-socket`
 * Unix socket) adds a virtio-fs device with `vm.add-fs`, a virtio-net device
 * on a tap descriptor with `vm.add-net` (the descriptor rides on the request
 * as SCM_RIGHTS), and removes either with `vm.remove-device`. The API has no
 * event stream, so `vm.info` is polled: a VMM that stops answering, or a VM no
 * longer running, is gone; a device that left `config.fs` or `config.net`
 * without our asking was removed by the guest.
 */

export interface CloudHypervisorOptions {
  /** The VM's name, for logs. */
  name?: string;
  logger?: Logger;
  /** Per-request limit; default 10 s. */
  timeoutMs?: number;
  /** How often `vm.info` is polled for events; default 1 s. */
  pollMs?: number;
}

const API = '/api/v1';
/** The virtio-fs config space holds the tag in 36 bytes. */
const MAX_BODY_BYTES = 10 * 1024 * 1024;
/** VmState values in which the guest runs and can take or release a device. */
const LIVE_STATES = new Set(['Running', 'Paused', 'BreakPoint']);
/** Socket errors that mean nobody serves the API any more. */
const GONE_CODES = new Set(['ENOENT', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ENOTSOCK']);
/** Consecutive failed polls (timeouts, garbage) after which the VMM counts as gone. */
const MAX_POLL_FAILURES = 3;

/** `FsConfig` of the API, as far as we read it back. */
export const ChFsConfig = z.looseObject({
  tag: z.string(),
  socket: z.string(),
  num_queues: z.number().int(),
  queue_size: z.number().int(),
  id: z.string().nullish(),
});
export type ChFsConfig = z.infer<typeof ChFsConfig>;

/** `NetConfig` of the API, as far as we read it back. */
export const ChNetConfig = z.looseObject({
  id: z.string().nullish(),
  mac: z.string().nullish(),
  tap: z.string().nullish(),
});
export type ChNetConfig = z.infer<typeof ChNetConfig>;

export const ChVmInfo = z.looseObject({
  state: z.string().min(1),
  config: z.looseObject({ fs: z.array(ChFsConfig).nullish(), net: z.array(ChNetConfig).nullish() }),
  device_tree: z.record(z.string(), z.looseObject({ pci_bdf: z.string().nullish() })).nullish(),
});
export type ChVmInfo = z.infer<typeof ChVmInfo>;

export const ChPciDeviceInfo = z.object({ id: z.string(), bdf: z.string() });
export const ChVmmPing = z.looseObject({ version: z.string() });

/** The body of `PUT vm.add-fs`. */
export function fsConfigFor(spec: ShareSpec): Record<string, unknown> {
  return { tag: spec.tag, socket: spec.socketPath, num_queues: 1, queue_size: spec.queueSize ?? 1024, id: shareDeviceId(spec.id) };
}

/** One descriptor is one queue pair; cloud-hypervisor requires `num_queues` to be twice the descriptors it is given. */
const NET_QUEUES_PER_FD = 2;
const NET_QUEUE_SIZE = 256;

/** The tap descriptor a NIC is plugged on; cloud-hypervisor has no other backend we can give it. */
export function tapFdOf(spec: NetSpec): number {
  if (spec.backend.type === 'stream') {
    throw new VmmError(
      `NIC ${spec.id}: cloud-hypervisor cannot connect a NIC to the stream socket ${spec.backend.socketPath}: its NetConfig has no stream backend, ` +
        'only a tap (by name or by descriptor) or a vhost-user-net socket (vhost_user), and a stream socket is not vhost-user; use a tap network for this VM',
    );
  }
  if (spec.backend.type === 'user') throw new VmmError(`NIC ${spec.id}: cloud-hypervisor has no user-mode networking of its own; use a tap network for this VM`);
  const { fd, tapName } = spec.backend;
  if (fd === undefined) throw new VmmError(`NIC ${spec.id}: a tap NIC needs the tap's descriptor from the privileged helper; cloud-hypervisor is not given the right to open ${tapName} itself`);
  if (!Number.isInteger(fd) || fd < 0) throw new VmmError(`NIC ${spec.id}: the tap's descriptor ${String(fd)} is not a descriptor number`);
  return fd;
}

/**
 * The body of `PUT vm.add-net` for a NIC on one tap descriptor. The
 * descriptor itself goes as SCM_RIGHTS on the same request: cloud-hypervisor
 * takes the ones that arrive that way and ignores (warns about) any `fds`
 * in the body, which its OpenAPI NetConfig does not list. No `tap` name
 * either: given one, cloud-hypervisor would open the tap itself instead.
 */
export function netConfigFor(spec: NetSpec): Record<string, unknown> {
  tapFdOf(spec);
  return { id: nicDeviceId(spec.id), ...(spec.mac ? { mac: spec.mac } : {}), num_queues: NET_QUEUES_PER_FD, queue_size: NET_QUEUE_SIZE };
}

export class ChApiError extends VmmError {
  constructor(
    readonly endpoint: string,
    readonly status: number | undefined,
    readonly code: string | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ChApiError';
  }

  /** The socket is not served: the VMM has exited (or never ran). */
  get unreachable(): boolean {
    return this.code !== undefined && GONE_CODES.has(this.code);
  }
}

interface ChResponse {
  status: number;
  body: string;
}

/** One API call on its own connection; rejects only when no HTTP answer came. */
export function chRequest(
  socketPath: string,
  method: 'GET' | 'PUT',
  endpoint: string,
  body: unknown,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<ChResponse> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return new Promise<ChResponse>((resolve, reject) => {
    const fail = (code: string | undefined, why: string, cause?: unknown) =>
      reject(new ChApiError(endpoint, undefined, code, `cloud-hypervisor API ${method} ${endpoint} at ${socketPath}: ${why}`, { cause }));
    const req = http.request(
      {
        socketPath,
        method,
        path: `${API}/${endpoint}`,
        agent: false,
        headers: {
          Host: 'localhost',
          Accept: 'application/json',
          ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}),
        },
        ...(opts.signal ? { signal: opts.signal } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_BODY_BYTES) {
            req.destroy();
            fail(undefined, `answer larger than ${MAX_BODY_BYTES} bytes`);
          } else chunks.push(chunk);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', (err: NodeJS.ErrnoException) => fail(err.code, err.message, err));
      },
    );
    req.setTimeout(timeoutMs, () => {
      req.destroy();
      fail('ETIMEDOUT', `no answer within ${timeoutMs} ms`);
    });
    req.on('error', (err: NodeJS.ErrnoException) => fail(err.code, err.message, err));
    req.end(payload);
  });
}

/**
 * `PUT endpoint` with `fds` passed as SCM_RIGHTS on the request, which Node's
 * http cannot do; rejects, as chRequest does, only when no HTTP answer came.
 */
export async function chRequestWithFds(
  socketPath: string,
  endpoint: string,
  body: unknown,
  fds: number[],
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<ChResponse> {
  try {
    const res = await requestWithFds(
      socketPath,
      { method: 'PUT', path: `${API}/${endpoint}`, body: Buffer.from(JSON.stringify(body)), contentType: 'application/json', fds },
      { timeoutMs: opts.timeoutMs ?? 10_000, maxBodyBytes: MAX_BODY_BYTES, ...(opts.signal ? { signal: opts.signal } : {}) },
    );
    return { status: res.status, body: res.body.toString('utf8') };
  } catch (cause) {
    const err = cause as NodeJS.ErrnoException;
    throw new ChApiError(endpoint, undefined, err.code, `cloud-hypervisor API PUT ${endpoint} at ${socketPath}: ${err.message}`, { cause });
  }
}

interface Tracked {
  id: string;
  tag: string;
  deviceId: string;
}

interface TrackedNic {
  deviceId: string;
}

export class CloudHypervisorAdapter extends AdapterBase implements VmmAdapter {
  readonly kind = 'cloud-hypervisor' as const;
  /** Virtiofs shares. */
  readonly shares: ShareCapability = this;
  /** NICs on a tap whose descriptor we are handed. */
  readonly net: NetCapability = this;
  /** None: its NetConfig takes a tap or vhost-user only. */
  readonly userNetworking = { modes: [], ownForwards: false } as const;
  private readonly ourShares = new Map<string, Tracked>();
  private readonly ourNics = new Map<string, TrackedNic>();
  private readonly detaching = new Set<string>();
  protected readonly log: Logger;
  private poll: NodeJS.Timeout | undefined;
  private pollFailures = 0;
  private closed = false;

  /** Ping the API, check the VM runs, and start watching it. */
  static async connect(socketPath: string, opts: CloudHypervisorOptions = {}): Promise<CloudHypervisorAdapter> {
    const adapter = new CloudHypervisorAdapter(socketPath, opts);
    const ping = await adapter.call('GET', 'vmm.ping', undefined, ChVmmPing);
    const info = await adapter.vmInfo().catch((err: unknown) => {
      if (err instanceof ChApiError && err.status === 404) throw new VmmError(`cloud-hypervisor at ${socketPath} has no VM yet (vm.info: 404)`, { cause: err });
      throw err;
    });
    if (!LIVE_STATES.has(info.state)) throw new VmmError(`cloud-hypervisor at ${socketPath}: the VM is not running (state: ${info.state})`);
    adapter.log.debug({ version: ping.version, state: info.state }, 'connected to cloud-hypervisor');
    adapter.startPolling();
    return adapter;
  }

  private constructor(
    readonly socketPath: string,
    private readonly opts: CloudHypervisorOptions,
  ) {
    super();
    this.log = opts.logger ?? childLogger({ component: 'vmm-cloud-hypervisor', vm: opts.name });
  }

  async attachShare(spec: ShareSpec, opts: AttachOptions = {}): Promise<AttachedShare> {
    checkShareSpec(spec);
    return this.serialized(() => this.doAttachShare(spec, opts));
  }

  async detachShare(id: string, opts: DetachOptions = {}): Promise<void> {
    assertSafeId('share', id);
    return this.serialized(() => this.doDetachShare(id, opts));
  }

  async listShares(): Promise<ShareInfo[]> {
    const info = await this.vmInfo();
    const prefix = shareDeviceId('');
    return (info.config.fs ?? []).map((fs) => {
      const deviceId = fs.id ?? undefined;
      const id = deviceId?.startsWith(prefix) ? deviceId.slice(prefix.length) : undefined;
      const attachedHere = id !== undefined && this.ourShares.get(id)?.deviceId === deviceId;
      const location = deviceId ? (info.device_tree?.[deviceId]?.pci_bdf ?? undefined) : undefined;
      return { id, tag: fs.tag, deviceId, location, attachedHere };
    });
  }

  async attachNet(spec: NetSpec, opts: AttachOptions = {}): Promise<DeviceHandle> {
    checkNetSpec(spec);
    const fd = tapFdOf(spec);
    const body = netConfigFor(spec);
    return this.serialized(() => this.doAttachNet(spec, body, fd, opts));
  }

  async detachNet(id: string, opts: DetachOptions = {}): Promise<void> {
    assertSafeId('NIC', id);
    return this.serialized(() => this.doDetachNet(id, opts));
  }

  /** Every virtio-net device the VM has, ours (by our naming) and those it was started with. */
  async listNet(): Promise<DeviceInfo[]> {
    const info = await this.vmInfo();
    const prefix = nicDeviceId('');
    return (info.config.net ?? []).map((n) => {
      const deviceId = n.id ?? undefined;
      const id = deviceId?.startsWith(prefix) ? deviceId.slice(prefix.length) : undefined;
      const location = deviceId ? (info.device_tree?.[deviceId]?.pci_bdf ?? undefined) : undefined;
      return { kind: 'net', id, deviceId, location };
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.poll);
    this.dropListeners();
  }

  private async doAttachShare(spec: ShareSpec, opts: AttachOptions): Promise<AttachedShare> {
    if (this.ourShares.has(spec.id)) throw new VmmError(`share ${spec.id} is already attached`);
    const body = fsConfigFor(spec);
    const deviceId = shareDeviceId(spec.id);
    if ((await this.vmInfo()).config.fs?.some((fs) => fs.id === deviceId)) {
      throw new VmmError(`share ${spec.id}: device ${deviceId} is already in the VM (started with it, or left by an earlier daemon); detach it or leave it alone`);
    }
    const res = await this.send('PUT', 'vm.add-fs', body, opts);
    // 200 carries where the device went; 204 means it was added to a VM not yet booted.
    let location: string | undefined;
    if (res.status === 200) location = parseJson('vm.add-fs', res.body, ChPciDeviceInfo).bdf;
    else if (res.status !== 204) {
      const hint = res.status === 500 ? ' (vhost-user devices need the VM started with --memory shared=on)' : '';
      throw new VmmError(`share ${spec.id}: vm.add-fs failed with HTTP ${res.status}: ${excerpt(res.body)}${hint}`);
    }
    this.ourShares.set(spec.id, { id: spec.id, tag: spec.tag, deviceId });
    this.log.info({ share: spec.id, tag: spec.tag, deviceId, location }, 'share attached');
    return { id: spec.id, tag: spec.tag, deviceId, location };
  }

  private async doDetachShare(id: string, opts: DetachOptions): Promise<void> {
    const deviceId = shareDeviceId(id);
    const present = (await this.vmInfo()).config.fs?.some((fs) => fs.id === deviceId) ?? false;
    if (!this.ourShares.has(id) && !present) throw new VmmError(`share ${id} is not attached to this VM`);
    await opts.beforeDetach?.();
    if (present) await this.removeDevice(`share ${id}`, deviceId, 'fs', opts);
    this.ourShares.delete(id);
    this.log.info({ share: id, deviceId }, 'share detached');
    this.emit({ type: 'device-detached', kind: 'share', id, deviceId, expected: true });
  }

  private async doAttachNet(spec: NetSpec, body: Record<string, unknown>, fd: number, opts: AttachOptions): Promise<DeviceHandle> {
    const deviceId = nicDeviceId(spec.id);
    if (this.ourNics.has(spec.id) || (await this.vmInfo()).config.net?.some((n) => n.id === deviceId)) {
      throw new VmmError(`NIC ${spec.id}: device ${deviceId} is already in the VM; detach it first`);
    }
    const res = await chRequestWithFds(this.socketPath, 'vm.add-net', body, [fd], {
      timeoutMs: opts.timeoutMs ?? this.opts.timeoutMs ?? 10_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    // 200 carries where the device went; 204 means it was added to a VM not yet booted.
    let location: string | undefined;
    if (res.status === 200) location = parseJson('vm.add-net', res.body, ChPciDeviceInfo).bdf;
    else if (res.status !== 204) throw new VmmError(`NIC ${spec.id}: vm.add-net failed with HTTP ${res.status}: ${excerpt(res.body)}`);
    this.ourNics.set(spec.id, { deviceId });
    const tapName = spec.backend.type === 'tap' ? spec.backend.tapName : undefined;
    this.log.info({ nic: spec.id, deviceId, location, mac: spec.mac, tap: tapName }, 'NIC attached');
    return { kind: 'net', id: spec.id, deviceId, location };
  }

  private async doDetachNet(id: string, opts: DetachOptions): Promise<void> {
    const deviceId = nicDeviceId(id);
    const present = (await this.vmInfo()).config.net?.some((n) => n.id === deviceId) ?? false;
    if (!this.ourNics.has(id) && !present) throw new VmmError(`NIC ${id} is not attached to this VM`);
    await opts.beforeDetach?.();
    if (present) await this.removeDevice(`NIC ${id}`, deviceId, 'net', opts);
    this.ourNics.delete(id);
    this.log.info({ nic: id, deviceId }, 'NIC detached');
    this.emit({ type: 'device-detached', kind: 'net', id, deviceId, expected: true });
  }

  /** `vm.remove-device`, then wait for the guest to let go; the poller meanwhile knows it is ours going. `what` names it in errors. */
  private async removeDevice(what: string, deviceId: string, list: 'fs' | 'net', opts: DetachOptions): Promise<void> {
    this.detaching.add(deviceId);
    try {
      const res = await this.send('PUT', 'vm.remove-device', { id: deviceId }, opts);
      // 404: gone between our look and our request.
      if (res.status !== 204 && res.status !== 404) {
        throw new VmmError(`${what}: vm.remove-device ${deviceId} failed with HTTP ${res.status}: ${excerpt(res.body)}`);
      }
      await this.waitRemoved(deviceId, list, opts.timeoutMs ?? 10_000, opts.signal);
    } finally {
      this.detaching.delete(deviceId);
    }
  }

  /** The guest's eject completes the removal; until then the device stays in `config.fs` or `config.net`. */
  private async waitRemoved(deviceId: string, list: 'fs' | 'net', timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!(await this.vmInfo()).config[list]?.some((d) => d.id === deviceId)) return;
      if (signal?.aborted) throw new VmmError(`detach of ${deviceId} was aborted`);
      if (Date.now() > deadline) {
        throw new VmmError(`${deviceId} was still in the VM ${timeoutMs} ms after vm.remove-device; ACPI hot-unplug needs a running guest that releases the device`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private startPolling(): void {
    const tick = async () => {
      if (this.closed || this.gone) return;
      await this.pollOnce();
      if (!this.closed && !this.gone) this.poll = setTimeout(() => void tick(), this.opts.pollMs ?? 1000);
    };
    this.poll = setTimeout(() => void tick(), this.opts.pollMs ?? 1000);
    this.poll.unref();
  }

  private async pollOnce(): Promise<void> {
    let res: ChResponse;
    try {
      res = await chRequest(this.socketPath, 'GET', 'vm.info', undefined, { timeoutMs: this.opts.timeoutMs ?? 10_000 });
    } catch (err) {
      if (err instanceof ChApiError && err.unreachable) return this.markGone(`cloud-hypervisor stopped answering: ${err.message}`);
      return this.onPollFailure(err);
    }
    if (res.status === 404) return this.markGone('cloud-hypervisor has no VM any more (vm.info: 404)');
    let info: ChVmInfo;
    try {
      info = res.status === 200 ? parseJson('vm.info', res.body, ChVmInfo) : failStatus('vm.info', res);
    } catch (err) {
      return this.onPollFailure(err);
    }
    this.pollFailures = 0;
    if (!LIVE_STATES.has(info.state)) return this.markGone(`the VM is ${info.state}`);
    this.reapRemoved('share', this.ourShares, info.config.fs ?? []);
    this.reapRemoved('net', this.ourNics, info.config.net ?? []);
  }

  /** Tracked devices no longer in the VM's config that we did not ask to remove: the guest (or someone else) removed them. */
  private reapRemoved(kind: 'share' | 'net', tracked: Map<string, { deviceId: string }>, config: readonly { id?: string | null | undefined }[]): void {
    const present = new Set(config.map((d) => d.id));
    for (const [id, device] of tracked) {
      if (present.has(device.deviceId) || this.detaching.has(device.deviceId)) continue;
      tracked.delete(id);
      if (kind === 'share') this.log.warn({ share: id, deviceId: device.deviceId }, 'share removed without our asking');
      else this.log.warn({ nic: id, deviceId: device.deviceId }, 'NIC removed without our asking');
      this.emit({ type: 'device-detached', kind, id, deviceId: device.deviceId, expected: false });
    }
  }

  private onPollFailure(err: unknown): void {
    this.pollFailures += 1;
    this.log.warn({ err, failures: this.pollFailures }, 'vm.info poll failed');
    if (this.pollFailures >= MAX_POLL_FAILURES) this.markGone(`vm.info failed ${this.pollFailures} times in a row: ${(err as Error).message}`);
  }

  private async vmInfo(): Promise<ChVmInfo> {
    return this.call('GET', 'vm.info', undefined, ChVmInfo);
  }

  /** A call whose only success is 200 with a body of `schema`. */
  private async call<T>(method: 'GET' | 'PUT', endpoint: string, body: unknown, schema: z.ZodType<T>): Promise<T> {
    const res = await this.send(method, endpoint, body);
    if (res.status !== 200) failStatus(endpoint, res);
    return parseJson(endpoint, res.body, schema);
  }

  private send(method: 'GET' | 'PUT', endpoint: string, body: unknown, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<ChResponse> {
    return chRequest(this.socketPath, method, endpoint, body, {
      timeoutMs: opts.timeoutMs ?? this.opts.timeoutMs ?? 10_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  }

  protected override whenGone(reason: string): void {
    clearTimeout(this.poll);
    this.log.info({ reason }, 'cloud-hypervisor VM gone');
  }

}

function parseJson<T>(endpoint: string, body: string, schema: z.ZodType<T>): T {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (cause) {
    throw new VmmError(`cloud-hypervisor ${endpoint}: answer is not JSON: ${excerpt(body)}`, { cause });
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new VmmError(`cloud-hypervisor ${endpoint}: unexpected answer: ${parsed.error.message}`);
  return parsed.data;
}

function failStatus(endpoint: string, res: ChResponse): never {
  throw new ChApiError(endpoint, res.status, undefined, `cloud-hypervisor ${endpoint} failed with HTTP ${res.status}: ${excerpt(res.body)}`);
}

function excerpt(body: string): string {
  const text = body.trim();
  return text ? (text.length > 500 ? `${text.slice(0, 500)}…` : text) : '(no body)';
}
