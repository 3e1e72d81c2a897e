import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, fstatSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { requireProgram } from '../deps.js';
import { runProgram } from '../exec.js';
import { packageRoot } from '../paths.js';
import { capabilitiesOf, lackOf, VmmError, type NetSpec, type VmmEvent } from './adapter.js';
import { CloudHypervisorAdapter, fsConfigFor, netConfigFor } from './cloud-hypervisor.js';

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

/** A descriptor the SCM_RIGHTS proxy (below) received, as it saw it. */
interface ReceivedFd {
  /** Byte offset in the connection's stream at which it arrived: 0 is with the request line. */
  offset: number;
  dev: string;
  ino: string;
  /** The file position in /proc/self/fdinfo: shared by every copy of one open file. */
  pos: number;
}

class FakeCloudHypervisor {
  readonly requests: Seen[] = [];
  readonly violations: string[] = [];
  state = 'Running';
  created = true;
  fs: Record<string, unknown>[] = [{ tag: 'rootfs', socket: '/run/vfs-root.sock', num_queues: 1, queue_size: 1024, id: '_fs0' }];
  net: Record<string, unknown>[] = [{ tap: 'vmtap0', mac: '52:54:00:12:34:56', num_queues: 2, queue_size: 256, id: '_net0' }];
  /** Per vm.add-net request, the descriptors that came with it (through the proxy's header; undefined without the proxy). */
  readonly addNetFds: (ReceivedFd[] | undefined)[] = [];
  /** Descriptors that came with any other request. */
  readonly strayFds: ReceivedFd[] = [];
  /** The guest's ACPI eject takes this long after vm.remove-device. */
  ejectDelayMs = 0;
  /** Answer vm.add-fs with this status instead of doing it. */
  addFsStatus: number | undefined;
  /** Answer vm.add-net with this status instead of doing it. */
  addNetStatus: number | undefined;
  private slots = new Map<string, number>([['_net0', 3], ['_fs0', 4]]);
  private nextSlot = 6;
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
      const header = req.headers['x-fake-received-fds'];
      const fds = typeof header === 'string' ? (JSON.parse(header) as ReceivedFd[]) : undefined;
      if (route === '/vm.add-net') this.addNetFds.push(fds);
      else if (fds?.length) this.strayFds.push(...fds);
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
      this.slots.set(id, this.nextSlot++);
      return this.reply(res, op, 200, { id, bdf: this.bdf(id) });
    }
    if (call === 'PUT /vm.add-net') {
      if (this.addNetStatus) return this.reply(res, op, this.addNetStatus, this.addNetStatus === 200 ? undefined : 'Error from device manager: fake failure');
      const id = typeof body.id === 'string' ? body.id : `_net${this.net.length}`;
      // The spec lists no 409 for vm.add-net; cloud-hypervisor answers a duplicate id with 400.
      if (this.net.some((n) => n.id === id) || this.fs.some((f) => f.id === id)) return this.reply(res, op, 400, `Identifier ${id} is not unique`);
      this.net.push({ ...body, id });
      this.slots.set(id, this.nextSlot++);
      return this.reply(res, op, 200, { id, bdf: this.bdf(id) });
    }
    if (call === 'PUT /vm.remove-device') {
      const has = (list: Record<string, unknown>[]) => list.some((d) => d.id === body.id);
      if (!has(this.fs) && !has(this.net)) return this.reply(res, op, 404);
      setTimeout(() => {
        this.fs = this.fs.filter((f) => f.id !== body.id);
        this.net = this.net.filter((n) => n.id !== body.id);
      }, this.ejectDelayMs).unref();
      return this.reply(res, op, 204);
    }
    this.violations.push(`the fake does not implement ${call}`);
    this.reply(res, op, 500);
  }

  removeByGuest(id: string): void {
    this.fs = this.fs.filter((f) => f.id !== id);
    this.net = this.net.filter((n) => n.id !== id);
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
        net: this.net,
      },
      device_tree: Object.fromEntries([...this.net, ...this.fs].map((d) => [d.id as string, { id: d.id, resources: [], children: [], pci_bdf: this.bdf(d.id as string) }])),
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
    // Framed by Content-Length, as cloud-hypervisor's HTTP server does (never chunked).
    const text = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    res.writeHead(status, { 'Content-Type': typeof body === 'string' ? 'text/plain' : 'application/json', 'Content-Length': text.length }).end(text);
  }
}

// ---- a proxy that sees SCM_RIGHTS --------------------------------------------------

/**
 * Node cannot receive ancillary data and the project's addon only sends it,
 * so a python3 proxy sits on the API socket in front of the fake: it relays
 * every byte both ways, takes the descriptors each connection carries
 * (socket.recv_fds), describes each (fstat dev/ino, and the file position
 * from /proc/self/fdinfo, which only the same open file shares), closes its
 * copy, and tells the fake in a header after the request line. Descriptors
 * arriving after that point are printed as "late" on its stdout.
 */
const FD_PROXY = String.raw`
import json, os, socket, sys, threading
listen_path, backend_path = sys.argv[1], sys.argv[2]
lock = threading.Lock()
def say(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
def describe(fd, offset):
    st = os.fstat(fd)
    pos = None
    with open("/proc/self/fdinfo/%d" % fd) as f:
        for line in f:
            if line.startswith("pos:"):
                pos = int(line.split()[1])
    os.close(fd)
    return {"offset": offset, "dev": str(st.st_dev), "ino": str(st.st_ino), "pos": pos}
def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(client):
    backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    backend.connect(backend_path)
    back = threading.Thread(target=pump, args=(backend, client), daemon=True)
    back.start()
    buf, fds, offset, injected = b"", [], 0, False
    try:
        while True:
            data, got, _flags, _addr = socket.recv_fds(client, 65536, 16)
            described = [describe(fd, offset) for fd in got]
            if injected and described:
                say({"late": described})
            fds.extend(described)
            if not data:
                break
            offset += len(data)
            if injected:
                backend.sendall(data)
                continue
            buf += data
            end = buf.find(b"\r\n")
            if end >= 0:
                header = b"X-Fake-Received-Fds: " + json.dumps(fds).encode() + b"\r\n"
                backend.sendall(buf[:end + 2] + header + buf[end + 2:])
                injected, buf = True, b""
    except OSError:
        pass
    try:
        backend.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    back.join()
    backend.close()
    client.close()
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(listen_path)
server.listen(16)
say({"ready": True})
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
`;

class FdProxy {
  readonly late: unknown[] = [];
  private constructor(private readonly child: ChildProcess) {}

  static async start(listenPath: string, backendPath: string): Promise<FdProxy> {
    const child = spawn(requireProgram('python3'), ['-c', FD_PROXY, listenPath, backendPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    const proxy = new FdProxy(child);
    await new Promise<void>((resolve, reject) => {
      let pending = '';
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`the SCM_RIGHTS proxy exited (${code}) before it was ready`)));
      child.stdout!.on('data', (chunk: Buffer) => {
        pending += chunk.toString('utf8');
        for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
          const msg = JSON.parse(pending.slice(0, nl)) as { ready?: boolean; late?: unknown };
          pending = pending.slice(nl + 1);
          if (msg.ready) resolve();
          if (msg.late) proxy.late.push(msg.late);
        }
      });
    });
    return proxy;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill();
    await exited;
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
/** A NIC spec for pure checks; the one attached in tests carries a real descriptor. */
const NIC = { id: 'lan', backend: { type: 'tap' as const, tapName: 'xdpvm-t0', fd: 99 }, mac: '02:5a:00:00:00:01' };

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

  it('hold a NetConfig to the spec: ours passes; descriptor numbers in the body, or misspelt fields, do not', () => {
    const netConfig = { $ref: '#/components/schemas/NetConfig' };
    expect(spec.paths['/vm.add-net']?.put?.requestBody?.content['application/json']?.schema).toEqual(netConfig);
    expect(validate(netConfig, netConfigFor(NIC), 'body', true)).toEqual([]);
    // cloud-hypervisor takes descriptors only as SCM_RIGHTS; its NetConfig has no `fds`.
    expect(validate(netConfig, { ...netConfigFor(NIC), fds: [7] }, 'body', true)).toEqual(['body: property "fds" is not in the schema']);
    expect(validate(netConfig, { id: 'n', 'num-queues': 2 }, 'body', true)).toEqual(['body: property "num-queues" is not in the schema']);
    expect(validate(netConfig, { id: 'n', num_queues: '2' }, 'body', true)).toEqual(['body.num_queues: expected integer, got "2"']);
    expect(validate({ $ref: '#/components/schemas/PciDeviceInfo' }, { id: 'n' }, 'answer', false)).toEqual(['answer: missing required "bdf"']);
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

  it('has the shares and net capabilities, and says in words naming itself what it lacks', async () => {
    const adapter = await connect();
    expect(capabilitiesOf(adapter)).toEqual(['shares', 'net']);
    expect(lackOf(adapter, 'net')).toBeUndefined();
    expect(lackOf(adapter, 'usb')).toBe("this VM's VMM, cloud-hypervisor, cannot attach USB devices through xdp-vm");
    expect(lackOf(adapter, 'shares')).toBeUndefined();
  });
});

describe('cloud-hypervisor NICs, with the descriptor seen arriving over SCM_RIGHTS', () => {
  let proxy: FdProxy;
  let tapFile: string;
  let tapFd: number;
  /** Bytes written through tapFd before it is sent: its file position, which the receiver must see too. */
  const WRITTEN = 37;

  beforeEach(async () => {
    // The fake moves behind the proxy, which takes over the API socket.
    await fake.stop();
    fake = new FakeCloudHypervisor();
    await fake.listen(path.join(dir, 'fake.sock'));
    proxy = await FdProxy.start(socket, path.join(dir, 'fake.sock'));
    // A plain file stands in for the tap's queue: SCM_RIGHTS passes any descriptor.
    tapFile = path.join(dir, 'tap-queue');
    tapFd = openSync(tapFile, 'w+');
    writeSync(tapFd, 'x'.repeat(WRITTEN));
  });

  afterEach(async () => {
    await proxy.stop();
    closeSync(tapFd);
    expect(proxy.late).toEqual([]);
    expect(fake.strayFds).toEqual([]);
  });

  const nic = (over: Partial<NetSpec> = {}): NetSpec => ({ id: 'lan', backend: { type: 'tap', tapName: 'xdpvm-t0', fd: tapFd }, mac: '02:5a:00:00:00:01', ...over });
  const addNets = () => fake.requests.filter((r) => r.path === '/vm.add-net');

  it('attaching sends vm.add-net with exactly our NetConfig, the tap descriptor riding on the request line', async () => {
    const adapter = await connect();
    const handle = await adapter.attachNet(nic());
    expect(handle).toEqual({ kind: 'net', id: 'lan', deviceId: 'xdpvm-net-lan', location: '0000:00:06.0' });
    expect(addNets()).toEqual([{ method: 'PUT', path: '/vm.add-net', body: { id: 'xdpvm-net-lan', mac: '02:5a:00:00:00:01', num_queues: 2, queue_size: 256 } }]);
    // One descriptor, with the first byte of the request, and the very file we opened: same inode, same open file (shared position).
    const st = fstatSync(tapFd, { bigint: true });
    expect(fake.addNetFds).toEqual([[{ offset: 0, dev: String(st.dev), ino: String(st.ino), pos: WRITTEN }]]);
    // Every call went through the proxy; only vm.add-net carried a descriptor (checked after each test).
    expect(fake.requests.map((r) => r.path)).toEqual(['/vmm.ping', '/vm.info', '/vm.info', '/vm.add-net']);
    // The descriptor stays the caller's.
    expect(fstatSync(tapFd).ino).toBe(Number(st.ino));
  });

  it('without a MAC, cloud-hypervisor picks one: the NetConfig names none', async () => {
    const adapter = await connect();
    await adapter.attachNet(nic({ mac: undefined }));
    expect(addNets()[0]?.body).toEqual({ id: 'xdpvm-net-lan', num_queues: 2, queue_size: 256 });
  });

  it('lists the VM\'s own NICs as foreign and ours by id, at their PCI address', async () => {
    const adapter = await connect();
    await adapter.attachNet(nic());
    const expected = [
      { kind: 'net', id: undefined, deviceId: '_net0', location: '0000:00:03.0' },
      { kind: 'net', id: 'lan', deviceId: 'xdpvm-net-lan', location: '0000:00:06.0' },
    ];
    expect(await adapter.listNet()).toEqual(expected);
    // A restarted daemon recognises its NIC by the naming alone.
    expect(await (await connect()).listNet()).toEqual(expected);
  });

  it('detaching runs beforeDetach, removes the device by our id, and waits until it has left config.net', async () => {
    const adapter = await connect();
    await adapter.attachNet(nic());
    fake.ejectDelayMs = 300;
    const detached = nextEvent(adapter, 'device-detached');
    const order: string[] = [];
    const started = Date.now();
    await adapter.detachNet('lan', { beforeDetach: async () => void order.push(`before (removes so far: ${fake.requests.filter((r) => r.path === '/vm.remove-device').length})`) });
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(order).toEqual(['before (removes so far: 0)']);
    expect(fake.requests.filter((r) => r.path === '/vm.remove-device')).toEqual([{ method: 'PUT', path: '/vm.remove-device', body: { id: 'xdpvm-net-lan' } }]);
    expect(await detached).toEqual({ type: 'device-detached', kind: 'net', id: 'lan', deviceId: 'xdpvm-net-lan', expected: true });
    expect((await adapter.listNet()).map((n) => n.deviceId)).toEqual(['_net0']);
  });

  it('a NIC left by an earlier daemon can be detached by its id; one that is not there fails plainly', async () => {
    await (await connect()).attachNet(nic());
    const later = await connect();
    await later.detachNet('lan');
    expect(fake.net.map((n) => n.id)).toEqual(['_net0']);
    let ran = false;
    await expect(later.detachNet('lan', { beforeDetach: async () => void (ran = true) })).rejects.toThrow('NIC lan is not attached to this VM');
    expect(ran).toBe(false);
    expect(fake.requests.filter((r) => r.path === '/vm.remove-device')).toHaveLength(1);
  });

  it('a detach the guest never completes times out with the reason', async () => {
    const adapter = await connect();
    await adapter.attachNet(nic());
    fake.ejectDelayMs = 60_000;
    await expect(adapter.detachNet('lan', { timeoutMs: 300 })).rejects.toThrow(/xdpvm-net-lan was still in the VM 300 ms after vm.remove-device/);
  });

  it('a NIC that leaves config.net without our asking is reported as an unexpected detach', async () => {
    const adapter = await connect();
    await adapter.attachNet(nic());
    const detached = nextEvent(adapter, 'device-detached');
    fake.removeByGuest('xdpvm-net-lan');
    expect(await detached).toEqual({ type: 'device-detached', kind: 'net', id: 'lan', deviceId: 'xdpvm-net-lan', expected: false });
    expect(await adapter.listNet()).toHaveLength(1);
  });

  it('refuses a stream (passt) backend, saying why, before any request', async () => {
    const adapter = await connect();
    const before = fake.requests.length;
    await expect(adapter.attachNet({ id: 'lan', backend: { type: 'stream', socketPath: '/run/user/1000/passt.sock' } })).rejects.toThrow(
      new VmmError(
        'NIC lan: cloud-hypervisor cannot connect a NIC to the stream socket /run/user/1000/passt.sock: its NetConfig has no stream backend, ' +
          'only a tap (by name or by descriptor) or a vhost-user-net socket (vhost_user), and a stream socket is not vhost-user; use a tap network for this VM',
      ),
    );
    expect(fake.requests.length).toBe(before);
  });

  it('refuses a bad MAC, a bad id and a tap without its descriptor, before any request', async () => {
    const adapter = await connect();
    const before = fake.requests.length;
    for (const mac of ['02:5A:00:00:00:01', '01:00:5e:00:00:01', '02:5a:00:00:00', '02-5a-00-00-00-01', ' 02:5a:00:00:00:01']) {
      await expect(adapter.attachNet(nic({ mac }))).rejects.toThrow(`NIC lan: MAC ${JSON.stringify(mac)} must be a unicast, locally administered address like 02:12:34:56:78:9a (lowercase)`);
    }
    await expect(adapter.attachNet(nic({ id: 'lan/../x' }))).rejects.toThrow(/NIC id "lan\/..\/x" must start with a letter/);
    await expect(adapter.detachNet('9lan')).rejects.toThrow(/NIC id "9lan" must start with a letter/);
    await expect(adapter.attachNet(nic({ backend: { type: 'tap', tapName: 'xdpvm-t0' } }))).rejects.toThrow(
      "NIC lan: a tap NIC needs the tap's descriptor from the privileged helper; cloud-hypervisor is not given the right to open xdpvm-t0 itself",
    );
    expect(fake.requests.length).toBe(before);
  });

  it('refuses a NIC id the VM already has, and reports an API failure with its status and text', async () => {
    const adapter = await connect();
    fake.net.push({ num_queues: 2, queue_size: 256, id: 'xdpvm-net-lan' });
    await expect(adapter.attachNet(nic())).rejects.toThrow('NIC lan: device xdpvm-net-lan is already in the VM; detach it first');
    expect(addNets()).toEqual([]);
    fake.net.pop();
    fake.addNetStatus = 400;
    await expect(adapter.attachNet(nic())).rejects.toThrow('NIC lan: vm.add-net failed with HTTP 400: Error from device manager: fake failure');
    expect(await adapter.listNet()).toHaveLength(1);
  });

  it('a device cold-added (204) is attached with no location', async () => {
    const adapter = await connect();
    fake.addNetStatus = 204;
    expect(await adapter.attachNet(nic())).toEqual({ kind: 'net', id: 'lan', deviceId: 'xdpvm-net-lan', location: undefined });
  });

  it('a descriptor that is not open fails the send, naming the call', async () => {
    const adapter = await connect();
    await expect(adapter.attachNet(nic({ backend: { type: 'tap', tapName: 'xdpvm-t0', fd: 1_000_000 } }))).rejects.toThrow(/PUT vm.add-net at .*: could not send the request with its descriptors: .*EBADF/);
  });
});
