import { z } from 'zod';

/**
 * Layer 2 wire messages. Every frame is one of these, validated on receipt on
 * both sides. Method parameters and results are validated again, per method,
 * against the descriptors in `methods.ts`.
 */
/**
 * Version 2 added notifications (`note` frames) and the host's list of the
 * portals it serves the VM in `welcome`. A version-1 peer never sees either:
 * they are sent only when both sides speak 2, and a v1 welcome carries no
 * `portals` (a v1 guest's schema would refuse the key).
 */
export const PROTOCOL_VERSION = 2;
export const MIN_PROTOCOL_VERSION = 1;
/** The first version with notifications and capabilities. */
export const NOTIFICATIONS_SINCE = 2;

const Id = z.number().int().min(1).max(2 ** 31 - 1);
const MethodName = z.string().regex(/^[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)+$/).max(64);

export const ErrorCode = z.enum([
  'bad-frame',
  'too-large',
  'unsupported-version',
  'not-ready',
  'unknown-method',
  'invalid-params',
  'invalid-result',
  'cancelled',
  'denied',
  'busy',
  'failed',
]);
export type ErrorCode = z.infer<typeof ErrorCode>;

export const Hello = z
  .object({
    t: z.literal('hello'),
    versions: z.tuple([z.number().int().min(0), z.number().int().min(0)]),
    agent: z.object({ name: z.string().max(64), version: z.string().max(32) }).strict(),
  })
  .strict();
export type Hello = z.infer<typeof Hello>;

export const Welcome = z
  .object({
    t: z.literal('welcome'),
    version: z.number().int().min(0),
    /** The host's name for this VM, for the guest's logs. Identity is the transport, not this. */
    vm: z.string().max(64),
    /** Since version 2: the portals the host serves this VM; the guest exports only their interfaces. */
    portals: z.array(z.string().max(64)).max(64).optional(),
  })
  .strict();
export type Welcome = z.infer<typeof Welcome>;

export const Request = z.object({ t: z.literal('req'), id: Id, method: MethodName, params: z.unknown() }).strict();
export type Request = z.infer<typeof Request>;

export const Result = z.object({ t: z.literal('res'), id: Id, result: z.unknown() }).strict();
export type Result = z.infer<typeof Result>;

export const Failure = z
  .object({ t: z.literal('err'), id: Id.nullable(), code: ErrorCode, message: z.string().max(1024) })
  .strict();
export type Failure = z.infer<typeof Failure>;

export const Cancel = z.object({ t: z.literal('cancel'), id: Id }).strict();
export type Cancel = z.infer<typeof Cancel>;

/** Since version 2: a one-way message, validated like a request but never answered. */
export const Notification = z.object({ t: z.literal('note'), method: MethodName, params: z.unknown() }).strict();
export type Notification = z.infer<typeof Notification>;

export const Frame = z.discriminatedUnion('t', [Hello, Welcome, Request, Result, Failure, Cancel, Notification]);
export type Frame = z.infer<typeof Frame>;

/** A failure that travels as a typed `err` frame. */
export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ProtocolError';
  }
}

export { describeIssues } from '../zod-issues.js';
