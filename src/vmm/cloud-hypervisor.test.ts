import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { requireProgram } from '../deps.js';
import { runProgram } from '../exec.js';
import { packageRoot } from '../paths.js';
import { capabilitiesOf, lackOf, type VmmEvent } from './adapter.js';
import { CloudHypervisorAdapter, fsConfigFor } from './cloud-hypervisor.js';

/**
 * No cloud-hypervisor binary exists here, so the adapter talks to a fake API
 * server on a Unix socket. The fake is held to the published OpenAPI contract
 * (test/fixtures/cloud-hypervisor/openapi.yaml): every method and path must
 * be in `paths`, every request body must satisfy its schema, and every answer
 * the fake gives must be one the spec lists, with a body of the listed schema.
 */

const SPEC_FILE = process.env.XDP_VM_CH_OPENAPI ?? path.join(packageRoot(), 'test', 'fixtures', 'cloud-hypervisor', 'openapi.yaml');

type Schema = Record<string, unknown>;
interface Operation {
  requestBody?: { required?: boolean; content: Record<string, { schema: Schema }> };
  responses: Record<string, { content?: Record<string, { schema: Schema }> }>;
}
interface OpenApi {
  servers: { url: string }[];
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, Schema> };
}

let spec: OpenApi;

beforeAll(async () => {
  if (!existsSync(SPEC_FILE)) throw new Error(`the cloud-hypervisor OpenAPI file is missing: ${SPEC_FILE} (set XDP_VM_CH_OPENAPI)`);
  const toJson = 'import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)';
  try {
    spec = JSON.parse((await runProgram(requireProgram('python3'), ['-c', toJson, SPEC_FILE])).stdout) as OpenApi;
  } catch (err) {
    throw new Error(`cannot read ${SPEC_FILE} (needs python3 with PyYAML: apt-get install python3-yaml): ${(err as Error).message}`);
  }
});

// ---- a JSON-Schema subset, as OpenAPI 3.0 schema objects use it ----------------

const ANNOTATIONS = new Set(['description', 'default', 'deprecated', 'example', 'nullable']);
const INT_RANGES: Record<string, [number, number]> = {
  int8: [-128, 127], uint8: [0, 255], int16: [-32768, 32767], uint16: [0, 65535],
  int32: [-(2 ** 31), 2 ** 31 - 1], uint32: [0, 2 ** 32 - 1],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER], uint64: [0, Number.MAX_SAFE_INTEGER],
};

/**
 * Problems of `value` against `schema`; [] when it conforms. `strict` also
 * rejects properties the schema does not name, so a misspelt field in what we
 * send cannot pass as an "additional" one. Unknown keywords are errors: the
 * validator never skips a constraint it does not understand.
 */
function validate(schema: Schema, value: unknown, at: string, strict: boolean): string[] {
  if (typeof schema.$ref === 'string') {
    const name = /^#\/components\/schemas\/(.+)$/.exec(schema.$ref)?.[1];
    const target = name ? spec.components.schemas[name] : undefined;
    return target ? validate(target, value, at, strict) : [`${at}: unresolvable $ref ${schema.$ref}`];
  }
  const errors: string[] = [];
  const known = new Set(['type', 'enum', 'format', 'required', 'properties', 'additionalProperties', 'items', 'minimum', 'maximum', 'minLength']);
  for (const key of Object.keys(schema)) if (!known.has(key) && !ANNOTATIONS.has(key)) errors.push(`${at}: validator does not support keyword "${key}"`);
  const type = schema.type as string | undefined;
  const isObject = typeof value === 'object' && value !== null && !Array.isArray(value);
  const typeOk =
    type === undefined ||
    (type === 'object' && isObject) ||
    (type === 'array' && Array.isArray(value)) ||
    (type === 'string' && typeof value === 'string') ||
    (type === 'boolean' && typeof value === 'boolean') ||
    (type === 'number' && typeof value === 'number' && Number.isFinite(value)) ||
    (type === 'integer' && Number.isInteger(value));
  if (!typeOk) return [...errors, `${at}: expected ${type}, got ${JSON.stringify(value)}`];
  if (Array.isArray(schema.enum) && !schema.enum.includes(value)) errors.push(`${at}: ${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`);
  if (typeof value === 'number') {
    const range = typeof schema.format === 'string' ? INT_RANGES[schema.format] : undefined;
    if (range && (value < range[0] || value > range[1])) errors.push(`${at}: ${value} is out of range for ${String(schema.format)}`);
    if (typeof schema.minimum === 'number' && value < schema.minimum) errors.push(`${at}: ${value} < minimum ${schema.minimum}`);
    if (typeof schema.maximum === 'number' && value > schema.maximum) errors.push(`${at}: ${value} > maximum ${schema.maximum}`);
  }
  if (typeof value === 'string' && typeof schema.minLength === 'number' && value.length < schema.minLength) errors.push(`${at}: shorter than ${schema.minLength}`);
  if (Array.isArray(value) && schema.items) value.forEach((item, i) => errors.push(...validate(schema.items as Schema, item, `${at}[${i}]`, strict)));
  if (isObject) {
    const obj = value as Record<string, unknown>;
    const props = (schema.properties ?? {}) as Record<string, Schema>;
    for (const name of (schema.required ?? []) as string[]) if (!(name in obj)) errors.push(`${at}: missing required "${name}"`);
    for (const [name, v] of Object.entries(obj)) {
      if (props[name]) errors.push(...validate(props[name], v, `${at}.${name}`, strict));
      else if (typeof schema.additionalProperties === 'object') errors.push(...validate(schema.additionalProperties as Schema, v, `${at}.${name}`, strict));
      else if (strict || schema.additionalProperties === false) errors.push(`${at}: property "${name}" is not in the schema`);
    }
  }
  return errors;
}

// ---- the fake cloud-hypervisor, held to the spec -------------------------------

interface Seen {
  method: string;
  path: string;
  body: unknown;
}

class FakeCloudHypervisor {
  readonly requests: Seen[] = [];
  readonly violations: string[] = [];
  state = 'Running';
  created = true;
  fs: Record<string, unknown>[] = [{ tag: 'rootfs', socket: '/run/vfs-root.sock', num_queues: 1, queue_size: 1024, id: '_fs0' }];
  /** The guest's ACPI eject takes this long after vm.remove-device. */
  ejectDelayMs = 0;
  /** Answer vm.add-fs with this status instead of doing it. */
  addFsStatus: number | undefined;
  private slots = new Map<string, number>([['_fs0', 4]]);
  private server = http.createServer((req, res) => this.handle(req, res));

  async listen(socketPath: string): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(socketPath, resolve));
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const base = new URL(spec.servers[0]!.url).pathname;
      const url = req.url ?? '';
      const method = (req.method ?? '').toLowerCase();
      const route = url.startsWith(`${base}/`) ? url.slice(base.length) : url;
      const op = spec.paths[route]?.[method];
      const body = raw ? (JSON.parse(raw) as unknown) : undefined;
      this.requests.push({ method: req.method ?? '', path: route, body });
      if (!op) {
        this.violations.push(`${req.method} ${url} is not in the spec`);
        return this.reply(res, undefined, 404);
      }
      const schema = op.requestBody?.content['application/json']?.schema;
      const problems = schema
        ? body === undefined
          ? op.requestBody?.required ? ['body: required but empty'] : []
          : [...validate(schema, body, 'body', true), ...(req.headers['content-type'] === 'application/json' ? [] : ['Content-Type is not application/json'])]
        : body === undefined ? [] : ['body: the operation takes none'];
      if (problems.length) {
        this.violations.push(...problems.map((p) => `${req.method} ${route}: ${p}`));
        return this.reply(res, op, 400);
      }
      this.dispatch(`${req.method} ${route}`, body as Record<string, unknown>, res, op);
    });
  }

  private dispatch(call: string, body: Record<string, unknown>, res: http.ServerResponse, op: Operation): void {
    if (call === 'GET /vmm.ping') return this.reply(res, op, 200, { version: 'v48.0-fake', pid: process.pid, features: ['kvm'] });
    if (!this.created) return this.reply(res, op, 404);
    if (call === 'GET /vm.info') return this.reply(res, op, 200, this.info());
    if (call === 'PUT /vm.add-fs') {
      if (this.addFsStatus) return this.reply(res, op, this.addFsStatus, this.addFsStatus === 200 ? undefined : 'Error from device manager: fake failure');
      const id = typeof body.id === 'string' ? body.id : `_fs${this.fs.length}`;
      if (this.fs.some((f) => f.id === id)) return this.reply(res, op, 409);
      this.fs.push({ ...body, id });
      this.slots.set(id, 5 + this.slots.size);
      return this.reply(res, op, 200, { id, bdf: this.bdf(id) });
    }
    if (call === 'PUT /vm.remove-device') {
      if (!this.fs.some((f) => f.id === body.id)) return this.reply(res, op, 404);
      setTimeout(() => (this.fs = this.fs.filter((f) => f.id !== body.id)), this.ejectDelayMs).unref();
      return this.reply(res, op, 204);
    }
    this.violations.push(`the fake does not implement ${call}`);
    this.reply(res, op, 500);
  }

  removeByGuest(id: string): void {
    this.fs = this.fs.filter((f) => f.id !== id);
  }

  private bdf(id: string): string {
    return `0000:00:${(this.slots.get(id) ?? 0).toString(16).padStart(2, '0')}.0`;
  }

  private info(): unknown {
    return {
      state: this.state,
      memory_actual_size: 536870912,
      config: {
        cpus: { boot_vcpus: 1, max_vcpus: 1 },
        memory: { size: 536870912, shared: true },
        payload: { kernel: '/boot/vmlinux', cmdline: 'console=hvc0 root=rootfs' },
        fs: this.fs,
      },
      device_tree: Object.fromEntries(this.fs.map((f) => [f.id as string, { id: f.id, resources: [], children: [], pci_bdf: this.bdf(f.id as string) }])),
    };
  }

  /** Answer only as the spec allows for this operation; a string body is an error text. */
  private reply(res: http.ServerResponse, op: Operation | undefined, status: number, body?: unknown): void {
    const listed = op?.responses[String(status)];
    if (op && !listed) this.violations.push(`the fake answered ${status}, which the spec does not list`);
    const schema = listed?.content?.['application/json']?.schema;
    if (schema) {
      if (body === undefined) this.violations.push(`the fake answered ${status} without the ${JSON.stringify(schema)} body`);
      else this.violations.push(...validate(schema, body, `answer ${status}`, false));
    }
    if (body === undefined) return void res.writeHead(status).end();
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': typeof body === 'string' ? 'text/plain' : 'application/json' }).end(text);
  }
}

// ---- tests ------------------------------------------------------------------------

let dir: string;
let socket: string;
let fake: FakeCloudHypervisor;
const adapters: CloudHypervisorAdapter[] = [];
const quiet = pino({ level: 'silent' });

beforeEach(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'xdpvm-ch-'));
  socket = path.join(dir, 'api.sock');
  fake = new FakeCloudHypervisor();
  await fake.listen(socket);
});

afterEach(async () => {
  await Promise.all(adapters.splice(0).map((a) => a.close()));
  await fake.stop();
  rmSync(dir, { recursive: true, force: true });
  // Every request the adapter made, and every answer the fake gave, was as the spec says.
  expect(fake.violations).toEqual([]);
});

async function connect(pollMs = 50): Promise<CloudHypervisorAdapter> {
  const adapter = await CloudHypervisorAdapter.connect(socket, { pollMs, timeoutMs: 2000, logger: quiet });
  adapters.push(adapter);
  return adapter;
}

function nextEvent(adapter: CloudHypervisorAdapter, type: VmmEvent['type']): Promise<VmmEvent> {
  return new Promise((resolve) => {
    const off = adapter.events.subscribe((e) => {
      if (e.type === type) off(), resolve(e);
    });
  });
}

const SHARE = { id: 'xdpvm-doc', tag: 'xdp-vm-doc', socketPath: '/run/user/1000/xdp-vm/work-doc.sock', queueSize: 1024 };

describe('the OpenAPI checks themselves', () => {
  it('reject bodies the spec forbids and accept the one the adapter builds', () => {
    const fsConfig = { $ref: '#/components/schemas/FsConfig' };
    expect(validate(fsConfig, fsConfigFor(SHARE), 'body', true)).toEqual([]);
    expect(validate(fsConfig, { tag: 'a', socket: '/s', queue_size: 1024 }, 'body', true)).toEqual(['body: missing required "num_queues"']);
    expect(validate(fsConfig, { tag: 7, socket: '/s', num_queues: 1, queue_size: 1.5 }, 'body', true)).toEqual(['body.tag: expected string, got 7', 'body.queue_size: expected integer, got 1.5']);
    expect(validate(fsConfig, { tag: 'a', socket: '/s', num_queues: 1, queue_size: 8, 'queue-size': 8 }, 'body', true)).toEqual(['body: property "queue-size" is not in the schema']);
    expect(validate(fsConfig, { tag: 'a', socket: '/s', num_queues: 1, queue_size: 8, pci_device_id: 300 }, 'body', true)).toEqual(['body.pci_device_id: 300 is out of range for uint8']);
    expect(validate({ $ref: '#/components/schemas/VmState' }, 'Stopped', 'state', false)).toEqual(['state: "Stopped" is not one of ["Created","Running","Shutdown","Paused","BreakPoint"]']);
    expect(spec.paths['/vm.add-fs']?.put).toBeDefined();
    expect(spec.paths['/vm.remove-device']?.put).toBeDefined();
    expect(spec.paths['/vm.info']?.get).toBeDefined();
  });
});

describe('cloud-hypervisor adapter against a spec-checked fake', () => {
  it('attaching a share sends vm.add-fs with a valid FsConfig and reports the PCI address', async () => {
    const adapter = await connect();
    const attached = await adapter.attachShare(SHARE);
    expect(attached).toEqual({ id: 'xdpvm-doc', tag: 'xdp-vm-doc', deviceId: 'xdpvm-fs-xdpvm-doc', location: '0000:00:06.0' });
    const add = fake.requests.find((r) => r.path === '/vm.add-fs');
    expect(add).toEqual({
      method: 'PUT',
      path: '/vm.add-fs',
      body: { tag: 'xdp-vm-doc', socket: SHARE.socketPath, num_queues: 1, queue_size: 1024, id: 'xdpvm-fs-xdpvm-doc' },
    });
  });

  it('a device cold-added (204) is attached with no location', async () => {
    const adapter = await connect();
    fake.addFsStatus = 204;
    expect((await adapter.attachShare(SHARE)).location).toBeUndefined();
  });

  it('lists the VM\'s own virtio-fs devices as foreign and ours as attached here', async () => {
    const adapter = await connect();
    await adapter.attachShare(SHARE);
    expect(await adapter.listShares()).toEqual([
      { id: undefined, tag: 'rootfs', deviceId: '_fs0', location: '0000:00:04.0', attachedHere: false },
      { id: 'xdpvm-doc', tag: 'xdp-vm-doc', deviceId: 'xdpvm-fs-xdpvm-doc', location: '0000:00:06.0', attachedHere: true },
    ]);
    const fresh = await connect();
    expect((await fresh.listShares())[1]).toMatchObject({ id: 'xdpvm-doc', attachedHere: false });
  });

  it('detaching unmounts first, removes the device, and waits until the guest has released it', async () => {
    const adapter = await connect();
    await adapter.attachShare(SHARE);
    fake.ejectDelayMs = 300;
    const order: string[] = [];
    const detached = nextEvent(adapter, 'device-detached');
    const started = Date.now();
    await adapter.detachShare('xdpvm-doc', {
      beforeDetach: async () => {
        order.push(`unmount (requests so far: ${fake.requests.filter((r) => r.path === '/vm.remove-device').length})`);
      },
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(order).toEqual(['unmount (requests so far: 0)']);
    expect(fake.requests.filter((r) => r.path === '/vm.remove-device')).toEqual([{ method: 'PUT', path: '/vm.remove-device', body: { id: 'xdpvm-fs-xdpvm-doc' } }]);
    expect(await detached).toEqual({ type: 'device-detached', kind: 'share', id: 'xdpvm-doc', deviceId: 'xdpvm-fs-xdpvm-doc', expected: true });
    expect((await adapter.listShares()).map((s) => s.deviceId)).toEqual(['_fs0']);
  });

  it('a share left by an earlier daemon can be detached by its id', async () => {
    await (await connect()).attachShare(SHARE);
    const later = await connect();
    await later.detachShare('xdpvm-doc');
    expect(fake.fs.map((f) => f.id)).toEqual(['_fs0']);
  });

  it('detaching a share that is not there fails plainly and touches nothing', async () => {
    const adapter = await connect();
    let unmounted = false;
    await expect(adapter.detachShare('xdpvm-doc', { beforeDetach: async () => void (unmounted = true) })).rejects.toThrow('share xdpvm-doc is not attached to this VM');
    expect(unmounted).toBe(false);
    expect(fake.requests.some((r) => r.path === '/vm.remove-device')).toBe(false);
  });

  it('a detach the guest never completes times out with the reason', async () => {
    const adapter = await connect();
    await adapter.attachShare(SHARE);
    fake.ejectDelayMs = 60_000;
    await expect(adapter.detachShare('xdpvm-doc', { timeoutMs: 300 })).rejects.toThrow(/still in the VM 300 ms after vm.remove-device/);
  });

  it('a device the guest removed by itself is reported as an unexpected detach', async () => {
    const adapter = await connect();
    await adapter.attachShare(SHARE);
    const detached = nextEvent(adapter, 'device-detached');
    fake.removeByGuest('xdpvm-fs-xdpvm-doc');
    expect(await detached).toEqual({ type: 'device-detached', kind: 'share', id: 'xdpvm-doc', deviceId: 'xdpvm-fs-xdpvm-doc', expected: false });
  });

  it('refuses to plug a device id the VM already has', async () => {
    const adapter = await connect();
    fake.fs.push({ tag: 'xdp-vm-doc', socket: '/s', num_queues: 1, queue_size: 1024, id: 'xdpvm-fs-xdpvm-doc' });
    await expect(adapter.attachShare(SHARE)).rejects.toThrow(/already in the VM/);
    expect(fake.requests.some((r) => r.path === '/vm.add-fs')).toBe(false);
  });

  it('an API failure reaches the caller with its status and text', async () => {
    const adapter = await connect();
    fake.addFsStatus = 500;
    await expect(adapter.attachShare(SHARE)).rejects.toThrow(/vm.add-fs failed with HTTP 500: Error from device manager: fake failure .*--memory shared=on/);
    expect(await adapter.listShares()).toHaveLength(1);
  });

  it('when cloud-hypervisor exits, the adapter reports vmm-gone', async () => {
    const adapter = await connect();
    const gone = nextEvent(adapter, 'vmm-gone');
    await fake.stop();
    rmSync(socket, { force: true });
    expect(await gone).toMatchObject({ type: 'vmm-gone', reason: expect.stringMatching(/stopped answering.*(ENOENT|ECONNREFUSED)/) });
    fake = new FakeCloudHypervisor();
    await fake.listen(socket);
  });

  it('when the VM shuts down, the adapter reports vmm-gone', async () => {
    const adapter = await connect();
    const gone = nextEvent(adapter, 'vmm-gone');
    fake.state = 'Shutdown';
    expect(await gone).toEqual({ type: 'vmm-gone', reason: 'the VM is Shutdown' });
  });

  it('connecting fails plainly without a running VM', async () => {
    fake.state = 'Created';
    await expect(connect()).rejects.toThrow(/the VM is not running \(state: Created\)/);
    fake.created = false;
    await expect(connect()).rejects.toThrow(/has no VM yet \(vm.info: 404\)/);
    await expect(CloudHypervisorAdapter.connect(path.join(dir, 'absent.sock'), { logger: quiet })).rejects.toThrow(/vmm.ping at .*absent.sock: .*ENOENT/);
  });

  it('has the shares capability only, and says in words naming itself what it lacks', async () => {
    const adapter = await connect();
    expect(capabilitiesOf(adapter)).toEqual(['shares']);
    expect(lackOf(adapter, 'usb')).toBe("this VM's VMM, cloud-hypervisor, cannot attach USB devices through xdp-vm");
    expect(lackOf(adapter, 'shares')).toBeUndefined();
  });
});
