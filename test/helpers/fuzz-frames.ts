import { FrameDecoder, FrameError, HEADER_BYTES, MAX_FRAME_BYTES } from '../../src/protocol/framing.js';
import { Frame, MIN_PROTOCOL_VERSION, NOTIFICATIONS_SINCE, PROTOCOL_VERSION } from '../../src/protocol/messages.js';

/**
 * Frames a compromised guest might send, from a seeded generator, so a
 * failing run can be replayed with its seed: random bytes with good and bad
 * length headers, byte- and JSON-level mutations of valid frames, and
 * schema-valid frames full of hostile values (bidi, zero-width and tag
 * characters, combining runs, control characters, "../" names, arrays at
 * their caps, ids at their limits).
 *
 * Each frame is classified the way the host will see it, with the
 * protocol's own decoder and frame schema: whether the link survives it, and
 * if not, which error code the host should send.
 */

/** sfc32: small, fast, and the same sequence for the same seed everywhere. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** [0, 1) */
  float(): number {
    return this.u32() / 2 ** 32;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** One of `choices` by weight. */
  weighted<T>(choices: readonly [number, T][]): T {
    const total = choices.reduce((s, [w]) => s + w, 0);
    let x = this.float() * total;
    for (const [w, v] of choices) {
      if ((x -= w) < 0) return v;
    }
    return choices[choices.length - 1]![1];
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      for (let j = 0; j < 4 && i + j < n; j++) b[i + j] = (v >>> (8 * j)) & 0xff;
    }
    return b;
  }
}

/** Characters that must never reach a host view or a log as they are. */
export const TRICK_CHARS = [
  '\u202e', // RIGHT-TO-LEFT OVERRIDE
  '\u202d',
  '\u202a',
  '\u202b',
  '\u202c',
  '\u2066', // LEFT-TO-RIGHT ISOLATE
  '\u2067',
  '\u2068',
  '\u2069',
  '\u200e',
  '\u200f',
  '\u061c',
  '\u200b', // ZERO WIDTH SPACE
  '\u200c',
  '\u200d',
  '\u2060',
  '\ufeff',
  '\u00ad',
  '\u180e',
  '\u034f',
  '\u115f',
  '\u3164',
  '\u2800',
  '\u2028',
  '\u2029',
  '\u{e0001}', // LANGUAGE TAG
  '\u{e0041}', // TAG LATIN CAPITAL LETTER A
  '\u{e007f}', // CANCEL TAG
  '\x1b', // ESC
  '\x1b[2J\x1b[31m',
  '\x1b]0;owned\x07',
  '\x9b', // C1 CSI
  '\x85',
  '\x7f',
  '\x00',
  '\x08',
  '\r',
  '\n',
  '\t',
];

const PIECES = [
  'report.pdf',
  'Open File',
  '../',
  '../../etc/passwd',
  '/etc/shadow',
  '..',
  '.',
  'a/b',
  '\u2215etc\u2215passwd', // DIVISION SLASH
  '\uff0fetc', // FULLWIDTH SOLIDUS
  'gpj.exe',
  'NaN',
  'Infinity',
  '-0',
  '1e308',
  '%s%n%x',
  '${jndi:ldap://x}',
  '<b>bold</b>&amp;',
  '\ud800', // lone surrogate
  '\udfff',
  '👩‍👩‍👧‍👦',
  'Z\u0351\u0352\u0357\u0358\u0359\u035a\u035b\u035c\u035d\u035e\u035f',
  '__proto__',
  'constructor',
  ' ',
  '',
];

export class HostileValues {
  constructor(private readonly rng: Rng) {}

  /** A string of hostile pieces, at most `max` UTF-16 units (the schemas count those). */
  text(cap = 256): string {
    const r = this.rng;
    // Mostly short, sometimes up to the cap, now and then exactly at it.
    const max = r.chance(0.15) ? cap : Math.min(cap, 48);
    let s = '';
    const parts = r.range(1, 6);
    for (let i = 0; i < parts; i++) {
      s += r.weighted<() => string>([
        [4, () => r.pick(TRICK_CHARS)],
        [3, () => r.pick(PIECES)],
        [1, () => 'e' + '\u0301'.repeat(r.range(5, 300))],
        [1, () => r.pick(TRICK_CHARS).repeat(r.range(2, 200))],
        [1, () => 'A'.repeat(r.range(1, max))],
        [1, () => String.fromCodePoint(0xe0020 + r.int(0x60)).repeat(r.range(1, 40))],
      ])();
    }
    if (r.chance(0.03)) s = 'x'.repeat(cap); // at the cap exactly
    return s.length > max ? s.slice(0, max) : s;
  }

  /** Something that is a file name to the schema (one component, no NUL, <= 255 bytes) but hostile to a human. */
  fileName(): string {
    const r = this.rng;
    let s = truncateBytes(this.text(200).replace(/[/\0]/g, '').replace(/[\ud800-\udfff]/g, ''), 255);
    if (s === '' || s === '.' || s === '..') s = '...';
    if (r.chance(0.05)) s = 'é'.repeat(127) + 'x'; // 255 bytes
    return s;
  }

  /** A name the host must refuse: "..", "/", NUL, over 255 bytes. */
  badFileName(): string {
    return this.rng.pick(['..', '.', '../escaped.txt', '../../.bashrc', '/etc/passwd', 'a/../../b', 'nul\0byte', 'x'.repeat(256), 'é'.repeat(128), '', 'sub/']);
  }

  guestPath(): string {
    const r = this.rng;
    return r.pick([
      '/run/xdp-vm/doc/',
      '/run/xdp-vm/doc/../../../etc',
      '/etc/shadow',
      '/run/xdp-vm/doc/abcdef12/x',
      '/run/xdp-vm/doc/' + 'A'.repeat(64) + '/x',
      '/run/xdp-vm/doc/__proto__/x',
      'relative/path',
      '/' + 'a/'.repeat(2000),
      '/\0/etc',
      '/run/xdp-vm/doc/\u202e/x',
      '/' + this.text(400),
    ]).slice(0, 4096);
  }

  number(): number {
    return this.rng.pick([0, -0, 1, -1, 0.5, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 1e308, -1e308, 5e-324, Number.MAX_SAFE_INTEGER]);
  }

  /** Any JSON value, sometimes deeply nested. */
  any(depth = 0): unknown {
    const r = this.rng;
    const k = r.int(depth > 2 ? 5 : 8);
    switch (k) {
      case 0:
        return this.text(r.pick([8, 64, 300]));
      case 1:
        return this.number();
      case 2:
        return r.chance(0.5);
      case 3:
        return null;
      case 4:
        return r.pick(['NaN', 'Infinity', '-Infinity', '-0', '1e308', '0x7fffffff', '']);
      case 5:
        return Array.from({ length: r.range(0, 4) }, () => this.any(depth + 1));
      case 6:
        return Object.fromEntries(Array.from({ length: r.range(0, 4) }, () => [this.text(16), this.any(depth + 1)]));
      default:
        return nest(r.range(10, 2000), r.chance(0.5));
    }
  }
}

/** `s` cut to at most `max` bytes of UTF-8, at a code point boundary. */
export function truncateBytes(s: string, max: number): string {
  if (Buffer.byteLength(s) <= max) return s;
  let out = '';
  let bytes = 0;
  for (const ch of s) {
    const n = Buffer.byteLength(ch);
    if (bytes + n > max) break;
    out += ch;
    bytes += n;
  }
  return out;
}

/** `[[[...]]]` or `{"a":{"a":...}}`, `depth` levels deep (JSON.stringify manages a few thousand). */
export function nest(depth: number, arrays: boolean): unknown {
  let v: unknown = 0;
  for (let i = 0; i < depth; i++) v = arrays ? [v] : { a: v };
  return v;
}

/** The same as JSON text, for depths JSON.stringify would overflow its stack on. */
export function nestJson(depth: number, arrays: boolean): string {
  return arrays ? `${'['.repeat(depth)}0${']'.repeat(depth)}` : `${'{"a":'.repeat(depth)}0${'}'.repeat(depth)}`;
}

export const FRAME_CAP = MAX_FRAME_BYTES;

/** Stands for a value nested 100 to 100,000 levels deep, spliced into the JSON text. */
export const DEEP = '\u0000deep\u0000';

export function frameBytes(message: unknown, rng?: Rng): Buffer {
  let json = JSON.stringify(message);
  if (rng && json.includes('"\\u0000deep\\u0000"')) json = json.replace('"\\u0000deep\\u0000"', nestJson(rng.range(100, 20_000), rng.chance(0.5)));
  return withHeader(Buffer.from(json, 'utf8'));
}

export function withHeader(payload: Buffer, announced = payload.length): Buffer {
  const b = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  b.writeUInt32BE(announced >>> 0, 0);
  payload.copy(b, HEADER_BYTES);
  return b;
}

/** What the host does with a frame: keep the link, or close it with this code (`null`: closes without an err frame). */
export type Verdict =
  /**
   * `hello`: it is a hello, which resets the session (requests read before it are never answered) and
   * sets the link's version to `version`.
   */
  | { fatal: false; hello?: boolean; version?: number }
  | { fatal: true; code: 'bad-frame' | 'too-large' | 'unsupported-version' | null }
  /** The header promises more bytes than were sent: the host waits, and whatever comes next is read as this frame's payload. */
  | { fatal: true; stall: true; code: null };

/**
 * How the host will take `bytes` as the next data on a link that speaks
 * `linkVersion` (null: no hello yet), classified with the protocol's own
 * decoder and frame schema.
 */
export function classify(bytes: Buffer, linkVersion: number | null = PROTOCOL_VERSION): Verdict {
  const decoder = new FrameDecoder(MAX_FRAME_BYTES);
  let values: unknown[];
  try {
    values = decoder.push(bytes);
  } catch (err) {
    return { fatal: true, code: (err as FrameError).code === 'too-large' ? 'too-large' : 'bad-frame' };
  }
  if (decoder.pending > 0) return { fatal: true, stall: true, code: null };
  let version = linkVersion;
  let hello = false;
  for (const v of values) {
    const parsed = Frame.safeParse(v);
    if (!parsed.success) return { fatal: true, code: 'bad-frame' };
    const f = parsed.data;
    if (f.t === 'welcome') return { fatal: true, code: 'bad-frame' };
    if (f.t === 'err' && f.id === null) return { fatal: true, code: null };
    if (f.t === 'note' && (version === null || version < NOTIFICATIONS_SINCE)) return { fatal: true, code: 'bad-frame' };
    if (f.t === 'hello') {
      const [min, max] = f.versions;
      if (Math.min(max, PROTOCOL_VERSION) < Math.max(min, MIN_PROTOCOL_VERSION)) return { fatal: true, code: 'unsupported-version' };
      hello = true;
      version = Math.min(max, PROTOCOL_VERSION);
    }
  }
  return hello && version !== null ? { fatal: false, hello, version } : { fatal: false };
}

/** What kind of fuzz a frame is, for the run's summary. */
export type FuzzKind = 'random-bytes' | 'bad-header' | 'byte-mutation' | 'json-mutation' | 'hostile-valid' | 'protocol';

export interface FuzzFrame {
  kind: FuzzKind;
  what: string;
  bytes: Buffer;
  verdict: Verdict;
  /** A request with a fresh id: the host owes it an answer (unless the session is reset by a later hello). */
  awaits?: number;
}

export interface IdSource {
  /** A fresh request id of this link. */
  fresh(): number;
  /** One used on this link already (a duplicate, or a cancel of something real). */
  used(): number;
}

/** The generator. One per run; `next` draws a frame, `terminal` draws one that ends a link. */
export class FrameFuzzer {
  readonly v: HostileValues;
  private violationTurn = 0;
  /** The version the link under fuzz speaks now (null before its hello): frames are classified for it. */
  linkVersion: number | null = PROTOCOL_VERSION;

  constructor(readonly rng: Rng) {
    this.v = new HostileValues(rng);
  }

  // ---- valid frames, the raw material of mutations ----

  hello(hostileAgent = false): Record<string, unknown> {
    const r = this.rng;
    const agent = hostileAgent ? { name: this.v.text(64), version: this.v.text(32) } : { name: 'xdp-vm-guest', version: '0.1.0' };
    return { t: 'hello', versions: r.chance(0.9) ? [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION] : [0, r.pick([1, 2, 7, 2 ** 31])], agent };
  }

  options(kind: string, atCaps = false): Record<string, unknown> {
    const r = this.rng;
    const v = this.v;
    const o: Record<string, unknown> = {};
    const filter = (): unknown => [v.text(256), Array.from({ length: atCaps ? 64 : r.range(0, 4) }, () => [r.int(2), atCaps ? 'p'.repeat(256) : v.text(256)])];
    const choice = (): unknown => {
      const values = Array.from({ length: atCaps ? 64 : r.range(0, 4) }, () => [v.text(64), v.text(256)]);
      return [v.text(64), v.text(256), values, r.chance(0.5) && values.length ? (values[0] as [string])[0] : v.text(64)];
    };
    if (r.chance(0.5)) o.accept_label = v.text(256);
    if (r.chance(0.3)) o.modal = r.chance(0.5);
    if (r.chance(0.3)) o.multiple = r.chance(0.5);
    if (r.chance(0.3)) o.directory = r.chance(0.5);
    if (r.chance(0.4) || atCaps) o.filters = Array.from({ length: atCaps ? 16 : r.range(0, 5) }, filter);
    if (r.chance(0.3)) o.current_filter = filter();
    if (r.chance(0.4) || atCaps) o.choices = Array.from({ length: atCaps ? 8 : r.range(0, 4) }, choice);
    if (r.chance(0.4)) o.current_name = v.fileName();
    if (r.chance(0.3)) o.current_folder = v.guestPath();
    if (r.chance(0.3)) o.current_file = v.guestPath();
    if (kind === 'save-files' || r.chance(0.2) || atCaps) {
      o.files = Array.from({ length: atCaps ? 1024 : r.range(0, 8) }, () => (atCaps ? 'f'.repeat(240) + r.int(1e6) : v.fileName()));
      if (r.chance(0.3) && (o.files as string[]).length) (o.files as string[]).push((o.files as string[])[0]!); // a duplicate name
    }
    return o;
  }

  openRequest(id: number, atCaps = false): Record<string, unknown> {
    const r = this.rng;
    const kind = r.pick(['open', 'save', 'save-files']);
    return { t: 'req', id, method: 'fileChooser.open', params: { kind, title: this.v.text(1024), appId: this.v.text(256), options: this.options(kind, atCaps) } };
  }

  /** A valid frame of any type (the material for mutations). */
  validFrame(ids: IdSource): Record<string, unknown> {
    const r = this.rng;
    return r.weighted<() => Record<string, unknown>>([
      [5, () => this.openRequest(ids.fresh())],
      // A hello that survives its mutation resets the session, dropping the answers of what came before: rarely.
      [0.1, () => this.hello(r.chance(0.5))],
      [1, () => ({ t: 'req', id: ids.fresh(), method: 'session.ping', params: { seq: r.int(1000) } })],
      [1, () => ({ t: 'res', id: ids.fresh(), result: { mounted: true, detail: this.v.text(300) } })],
      [1, () => ({ t: 'err', id: ids.fresh(), code: 'failed', message: this.v.text(1024) })],
      [1, () => ({ t: 'cancel', id: ids.used() })],
      [0.5, () => this.note()],
    ])();
  }

  /** A notification: the host takes none from a guest (a version 1 link is closed by any). */
  note(): Record<string, unknown> {
    const r = this.rng;
    return { t: 'note', method: r.pick(['session.portals', 'session.ping', 'fileChooser.open', 'share.mount', 'x.y']), params: r.chance(0.5) ? { portals: [this.v.text(64)] } : this.v.any() };
  }

  // ---- the three families ----

  /** Schema-valid frames with hostile values; the link survives them (ids may clash, requests may be refused). */
  hostileValid(ids: IdSource): FuzzFrame {
    const r = this.rng;
    const [what, message] = r.weighted<() => [string, unknown]>([
      [60, () => ['req fileChooser.open', this.openRequest(r.chance(0.1) ? ids.used() : ids.fresh())]],
      [1, () => ['req fileChooser.open, random bytes as text', { ...this.openRequest(ids.fresh()), params: { kind: 'open', title: this.rng.bytes(this.rng.range(1, 1024)).toString('latin1'), appId: this.rng.bytes(64).toString('utf8').slice(0, 256), options: {} } }]],
      [0.3, () => ['req fileChooser.open at the caps', this.openRequest(ids.fresh(), true)]],
      [6, () => ['req with bad names', { t: 'req', id: ids.fresh(), method: 'fileChooser.open', params: { kind: 'save-files', title: 'x', appId: '', options: { files: [this.v.badFileName()] } } }]],
      [6, () => ['req with invalid params', { t: 'req', id: ids.fresh(), method: 'fileChooser.open', params: this.v.any() }]],
      [4, () => ['req of an unknown method', { t: 'req', id: ids.fresh(), method: r.pick(['fileChooser.nuke', 'share.mount', 'share.unmount', 'constructor.prototype', 'toString.call', 'hasOwnProperty.x']), params: this.v.any() }]],
      [6, () => ['session.ping', { t: 'req', id: ids.fresh(), method: 'session.ping', params: { seq: r.chance(0.5) ? this.v.number() : this.v.any() } }]],
      [8, () => ['cancel', { t: 'cancel', id: r.chance(0.5) ? ids.used() : r.pick([1, 2 ** 31 - 1, r.range(1, 2 ** 31 - 1)]) }]],
      [2, () => ['res of an unknown id', { t: 'res', id: r.range(1, 2 ** 31 - 1), result: this.v.any() }]],
      [2, () => ['err of an unknown id', { t: 'err', id: r.range(1, 2 ** 31 - 1), code: r.pick(['failed', 'denied', 'cancelled', 'busy']), message: this.v.text(1024) }]],
      [0.3, () => ['hello again', this.hello(r.chance(0.5))]],
      [3, () => ['notification', this.note()]],
      [2, () => ['ids at the limits', { t: 'req', id: r.pick([1, 2 ** 31 - 1]), method: 'session.ping', params: { seq: 0 } }]],
      [0.3, () => ['deep nesting in params', { t: 'req', id: ids.fresh(), method: 'fileChooser.open', params: DEEP }]],
    ])();
    const f = this.finish('hostile-valid', what, frameBytes(message, this.rng));
    const m = message as { t?: unknown; id?: unknown; method?: unknown };
    if (m.t === 'req' && m.method === 'fileChooser.open' && typeof m.id === 'number') f.awaits = m.id;
    return f;
  }

  /** A valid frame changed as JSON: a value replaced, a key added or removed, an element duplicated. */
  jsonMutation(ids: IdSource): FuzzFrame {
    const r = this.rng;
    const frame = this.validFrame(ids);
    const t = String(frame.t);
    const ops: string[] = [];
    for (let i = r.range(1, 3); i > 0; i--) ops.push(this.mutateJson(frame));
    return this.finish('json-mutation', `${t}: ${ops.join(', ')}`, frameBytes(frame));
  }

  /** A valid frame changed as bytes: bits flipped, bytes cut, inserted or spliced; the header fixed up, or not. */
  byteMutation(ids: IdSource): FuzzFrame {
    const r = this.rng;
    let payload: Buffer = Buffer.from(JSON.stringify(this.validFrame(ids)), 'utf8');
    const op = r.pick(['flip', 'flip', 'flip', 'cut', 'insert', 'overwrite', 'splice', 'truncate', 'extend']);
    // Mostly within a request's params, where a change that still parses keeps the link.
    const params = payload.indexOf('"params":');
    const from = params > 0 && r.chance(0.7) ? params + 9 : 0;
    const at = () => from + r.int(Math.max(1, payload.length - from - 1));
    switch (op) {
      case 'flip':
        payload = Buffer.from(payload);
        for (let i = r.range(1, 4); i > 0; i--) {
          const i0 = at();
          payload[i0] = payload[i0]! ^ (1 << r.int(8));
        }
        break;
      case 'cut': {
        const i0 = at();
        payload = Buffer.concat([payload.subarray(0, i0), payload.subarray(i0 + r.range(1, 8))]);
        break;
      }
      case 'insert': {
        const i0 = at();
        payload = Buffer.concat([payload.subarray(0, i0), r.chance(0.5) ? r.bytes(r.range(1, 4)) : Buffer.from(r.pick(['"', '\\', '\0', '}', ']', ',', '\u202e', '\x1b', '\\u0000', '\\ud800'])), payload.subarray(i0)]);
        break;
      }
      case 'overwrite': {
        payload = Buffer.from(payload);
        payload[at()] = r.pick([0x22, 0x5c, 0x00, 0x7b, 0x7d, 0xff, 0xc0, 0x80, 0x0a]);
        break;
      }
      case 'splice': {
        const other = Buffer.from(JSON.stringify(this.validFrame(ids)), 'utf8');
        payload = Buffer.concat([payload.subarray(0, r.int(payload.length)), other.subarray(r.int(other.length))]);
        break;
      }
      case 'truncate':
        payload = payload.subarray(0, r.int(payload.length));
        break;
      case 'extend':
        payload = Buffer.concat([payload, Buffer.from(r.pick([' ', '\n', 'x', '}', ',{}', '\0']))]);
        break;
    }
    if (payload.length === 0) payload = Buffer.from('{');
    const fixed = r.chance(0.9);
    const announced = fixed ? payload.length : Math.max(0, payload.length + r.range(-8, 8));
    return this.finish('byte-mutation', `${op}${fixed ? '' : ', header not fixed'}`, withHeader(payload, announced));
  }

  /** Random bytes: with a header that matches, a header over the cap, an empty frame, or no header at all. */
  randomBytes(): FuzzFrame {
    const r = this.rng;
    const n = r.weighted<number>([
      [6, r.range(1, 64)],
      [3, r.range(64, 4096)],
      [1, r.range(4096, 200_000)],
    ]);
    const blob = r.bytes(n);
    const [what, bytes] = r.weighted<() => [string, Buffer]>([
      [5, () => ['random payload, matching header', withHeader(blob)]],
      [2, () => ['random bytes, no header', blob]],
      [1, () => ['random payload, header one short', withHeader(blob, blob.length - 1)]],
    ])();
    return this.finish('random-bytes', what, bytes);
  }

  badHeader(): FuzzFrame {
    const r = this.rng;
    const [what, bytes] = r.pick<[string, Buffer]>([
      ['empty frame', withHeader(Buffer.alloc(0))],
      ['header over the cap by one', withHeader(Buffer.from('{}'), MAX_FRAME_BYTES + 1)],
      ['header 0x7fffffff', withHeader(Buffer.from('{}'), 0x7fffffff)],
      ['header 0xffffffff', withHeader(Buffer.from('{}'), 0xffffffff)],
      ['header at the cap, payload short', withHeader(Buffer.from('{"t":"cancel","id":1}'), MAX_FRAME_BYTES)],
    ]);
    return this.finish('bad-header', what, bytes);
  }

  /** Frames that are well framed and parse, but that the protocol refuses as a whole. */
  /** `which`: take the violations in turn (each comes up in every run) rather than at random. */
  protocolViolation(which?: number): FuzzFrame {
    const r = this.rng;
    const longKey = r.pick(['x'.repeat(20_000), '\u202e'.repeat(3000), this.v.text(1000)]);
    const violations: [string, unknown][] = [
      ['unknown frame type', { t: r.pick(['exploit', 'HELLO', '', '__proto__', 'constructor']), id: 1 }],
      ['welcome from a guest', { t: 'welcome', version: 1, vm: r.pick(['work', 'evil', this.v.text(64)]) }],
      ['err with no id, hostile message', { t: 'err', id: null, code: 'failed', message: this.v.text(1024) }],
      ['id 0', { t: 'req', id: 0, method: 'session.ping', params: { seq: 0 } }],
      ['id 2^31', { t: 'req', id: 2 ** 31, method: 'session.ping', params: { seq: 0 } }],
      ['id -1', { t: 'cancel', id: -1 }],
      ['id 1.5', { t: 'cancel', id: 1.5 }],
      ['id 1e308', { t: 'cancel', id: 1e308 }],
      ['id "1"', { t: 'cancel', id: '1' }],
      ['unknown key with a hostile name', { t: 'cancel', id: 1, [longKey]: 1 }],
      ['unknown key with a hostile name, in a hello', { t: 'hello', versions: [1, 1], agent: { name: 'x', version: '1' }, [longKey]: 1 }],
      ['method name that is not one', { t: 'req', id: 1, method: this.v.text(64), params: {} }],
      ['hello speaking only version 0', { t: 'hello', versions: [0, 0], agent: { name: 'x', version: '0' } }],
      ['hello speaking only a future version', { t: 'hello', versions: [PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5], agent: { name: 'x', version: '9' } }],
      ['hello with a hostile agent over the cap', { t: 'hello', versions: [1, 1], agent: { name: this.v.text(65) + 'x'.repeat(65), version: '1' } }],
      ['a JSON array', [1, 2, 3]],
      ['a JSON string', this.v.text(100)],
      ['null', null],
      ['deeply nested frame', DEEP],
    ];
    const [what, message] = which === undefined ? r.pick(violations) : violations[which % violations.length]!;
    return this.finish('protocol', what, frameBytes(message, this.rng));
  }

  /** Any frame: the mix of a run. */
  next(ids: IdSource): FuzzFrame {
    return this.rng.weighted<() => FuzzFrame>([
      [55, () => this.hostileValid(ids)],
      [25, () => this.jsonMutation(ids)],
      [18, () => this.byteMutation(ids)],
      // These always close the link, so mostly they come as a link's last frame (terminal).
      [1, () => this.randomBytes()],
      [0.5, () => this.protocolViolation()],
      [0.5, () => this.badHeader()],
    ])();
  }

  /** A frame that ends a link. */
  terminal(ids: IdSource): FuzzFrame {
    for (let tries = 0; tries < 50; tries++) {
      const f = this.rng.weighted<() => FuzzFrame>([
        [35, () => this.randomBytes()],
        [25, () => this.byteMutation(ids)],
        [10, () => this.jsonMutation(ids)],
        [20, () => this.protocolViolation(this.violationTurn++)],
        [10, () => this.badHeader()],
      ])();
      if (f.verdict.fatal) return f;
    }
    return this.badHeader();
  }

  private finish(kind: FuzzKind, what: string, bytes: Buffer): FuzzFrame {
    return { kind, what, bytes, verdict: classify(bytes, this.linkVersion) };
  }

  /** Apply one random change somewhere in `root`; say what it was. */
  private mutateJson(root: Record<string, unknown>): string {
    const r = this.rng;
    // Walk down to a random container; mostly inside a request's params, where the link survives it.
    let node: unknown = root;
    let pathDesc = '';
    if (root.params && typeof root.params === 'object' && r.chance(0.8)) {
      node = root.params;
      pathDesc = '.params';
    }
    for (let depth = 0; depth < 6 && r.chance(0.7); depth++) {
      const children = containerChildren(node);
      if (!children.length) break;
      const key = r.pick(children);
      const child = (node as Record<string | number, unknown>)[key];
      if (!child || typeof child !== 'object') break;
      node = child;
      pathDesc += `.${key}`;
    }
    if (Array.isArray(node)) {
      const op = r.pick(['dup', 'drop', 'replace', 'push']);
      if (op === 'dup' && node.length) node.push(node[r.int(node.length)]);
      else if (op === 'drop' && node.length) node.splice(r.int(node.length), 1);
      else if (op === 'replace' && node.length) node[r.int(node.length)] = this.v.any();
      else node.push(this.v.any());
      return `${op} in ${pathDesc || '(root)'}`;
    }
    const obj = node as Record<string, unknown>;
    const keys = Object.keys(obj);
    const op = r.pick(['replace', 'replace', 'replace', 'delete', 'add', 'retype']);
    if (op === 'add' || keys.length === 0) {
      obj[r.chance(0.5) ? r.pick(['__proto__', 'constructor', 'prototype', 'handle_token', 'uris', 'writable']) : this.v.text(32)] = this.v.any();
      return `add key in ${pathDesc || '(root)'}`;
    }
    const key = r.pick(keys);
    if (op === 'delete') delete obj[key];
    else if (op === 'retype') obj[key] = r.pick([null, 0, '', [], {}, true, '1']);
    else {
      const old = obj[key];
      obj[key] = typeof old === 'string' ? (r.chance(0.5) ? old + this.v.text(16) : this.v.text(old.length + 1)) : typeof old === 'number' ? this.v.number() : this.v.any();
    }
    return `${op} ${pathDesc}.${/^[a-z_]{1,20}$/.test(key) ? key : '(key)'}`;
  }
}

function containerChildren(node: unknown): (string | number)[] {
  if (Array.isArray(node)) return node.map((_, i) => i);
  if (node && typeof node === 'object') return Object.keys(node);
  return [];
}
